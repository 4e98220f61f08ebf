//! The escalation ladder, rule by rule, through its pure core: when a run starts, verifying and
//! clearing, the next rung, refusals and failures, approvals, no data, max_runs, the exact
//! `status_ok.ladder` and `why` objects, snapshots and replay. Then the estate's `[ladder]`:
//! each error a start refuses with (exit 2, one line naming the file, the line and the key),
//! through the binary.

use rollback_node::core::ladder::{
    Action, ConfigError, Event, Input, Key, Ladder, LadderConfig, LadderDecision, LadderState,
    Millis, Rung, RungOutcome, Sample, Signal, Take, SENDER,
};
use rollback_node::core::{Lane, Request};
use rollback_node::Estate;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

const NODE: &str = env!("CARGO_BIN_EXE_rollback-node");
const SECOND: Millis = 1000;

// ---------------------------------------------------------------------------------------------
// The core

fn signal(name: &str, above: f64) -> Signal {
    Signal {
        name: name.to_owned(),
        query: format!("{name}_query"),
        above,
    }
}

/// The four rungs of the example estate, least disruptive first: the kill switch, the traffic
/// switch, a rollback and a restore (the last two wait for approval by default).
fn four_rungs() -> Vec<Rung> {
    vec![
        Rung::new(json!({"type": "disable_feature", "feature": "new_checkout"})),
        Rung::new(json!({"type": "switch_traffic", "from": "green", "to": "blue"})),
        Rung::new(json!({"type": "rollback", "version": 3})),
        Rung::new(json!({"type": "restore", "backup": "users_backup_20240115"})),
    ]
}

/// One signal, `error_rate` above 0.05, the four rungs, the default settings.
fn config() -> LadderConfig {
    LadderConfig::new(
        "http://127.0.0.1:9090",
        vec![signal("error_rate", 0.05)],
        four_rungs(),
    )
}

/// A ladder with its clock, fed one input at a time.
struct Run {
    ladder: Ladder,
    now: Millis,
}

impl Run {
    fn new(config: &LadderConfig) -> Self {
        Run {
            ladder: Ladder::new(config).expect("a valid ladder"),
            now: 0,
        }
    }

    fn step(&mut self, input: Input) -> LadderDecision {
        self.ladder.step(&input)
    }

    /// `error_rate` = `value`, `seconds` after the last input.
    fn sample(&mut self, seconds: u64, value: f64) -> LadderDecision {
        self.now += seconds * SECOND;
        self.step(Input::Samples {
            at: self.now,
            values: vec![("error_rate".to_owned(), Sample::Value(value))],
        })
    }

    /// `error_rate` has no data, `seconds` after the last input.
    fn no_data(&mut self, seconds: u64, why: &str) -> LadderDecision {
        self.now += seconds * SECOND;
        self.step(Input::Samples {
            at: self.now,
            values: vec![("error_rate".to_owned(), Sample::NoData(why.to_owned()))],
        })
    }

    fn tick(&mut self, seconds: u64) -> LadderDecision {
        self.now += seconds * SECOND;
        self.step(Input::Tick { at: self.now })
    }

    fn done(&mut self, msg_id: u64, outcome: RungOutcome) -> LadderDecision {
        self.step(Input::RungDone {
            at: self.now,
            msg_id,
            outcome,
        })
    }

    fn approve(&mut self, rung: usize, by: &str) -> LadderDecision {
        self.step(Input::Approve {
            at: self.now,
            rung,
            by: by.to_owned(),
        })
    }

    fn state(&self) -> LadderState {
        self.ladder.state()
    }

    fn status(&self) -> Value {
        self.ladder.status().to_json()
    }

    /// Starts a run (two samples above 0.05): returns rung 0's Take.
    fn start(&mut self) -> Take {
        assert_eq!(self.sample(5, 0.2).takes().count(), 0);
        only_take(&self.sample(5, 0.3))
    }

    /// Completes `take` and lets its window end with bad samples: returns the next Take.
    fn not_cleared(&mut self, take: &Take) -> Option<Take> {
        assert!(self
            .done(take.msg_id, RungOutcome::Completed)
            .actions
            .is_empty());
        for _ in 0..11 {
            assert_eq!(self.sample(5, 0.4).takes().count(), 0);
        }
        self.tick(5).takes().next().cloned()
    }
}

fn only_take(decision: &LadderDecision) -> Take {
    let takes: Vec<&Take> = decision.takes().collect();
    assert_eq!(takes.len(), 1, "one Take: {decision:?}");
    takes[0].clone()
}

fn events(decision: &LadderDecision) -> Vec<Event> {
    decision.notes().map(|n| n.event.clone()).collect()
}

#[test]
fn a_run_starts_after_bad_samples_consecutive_samples_above_the_threshold() {
    let mut run = Run::new(&config());
    assert_eq!(
        run.status(),
        json!({"state": "watching", "rung": null, "runs": 0, "signals": {"error_rate": null}})
    );
    assert!(run.sample(5, 0.2).actions.is_empty());
    assert!(
        run.sample(5, 0.01).actions.is_empty(),
        "a good sample breaks the streak"
    );
    assert!(run.sample(5, 0.2).actions.is_empty());
    assert_eq!(
        run.status(),
        json!({"state": "watching", "rung": null, "runs": 0, "signals": {"error_rate": 0.2}})
    );
    let decision = run.sample(5, 0.3);
    assert_eq!(events(&decision), vec![Event::RunStarted]);
    let take = only_take(&decision);
    assert_eq!((take.msg_id, take.run, take.rung), (1, 1, 0));
    assert_eq!(take.lane, Lane::Flags);
    assert_eq!(
        take.request,
        Request::DisableFeature {
            feature: "new_checkout".to_owned()
        }
    );
    assert_eq!(
        take.body_with_msg_id(),
        json!({"type": "disable_feature", "feature": "new_checkout", "msg_id": 1})
    );
    assert_eq!(
        take.why.to_json(),
        json!({"signals": {"error_rate": [0.2, 0.3]}, "run": 1, "rung": 0})
    );
    assert_eq!(
        run.status(),
        json!({"state": "acting", "rung": 0, "runs": 1, "signals": {"error_rate": 0.3}})
    );
    assert_eq!(SENDER, "ladder");
}

#[test]
fn a_sample_at_the_threshold_is_good() {
    let mut run = Run::new(&config());
    for _ in 0..100 {
        assert!(run.sample(5, 0.05).actions.is_empty());
    }
    assert_eq!(run.state(), LadderState::Watching);
}

#[test]
fn bad_samples_inside_the_window_never_escalate_and_good_ones_clear() {
    let mut run = Run::new(&config());
    let take = run.start();
    assert!(run
        .done(take.msg_id, RungOutcome::Completed)
        .actions
        .is_empty());
    assert_eq!(
        run.status(),
        json!({"state": "verifying", "rung": 0, "runs": 1, "signals": {"error_rate": 0.3}})
    );
    assert_eq!(run.ladder.verify_until(), Some(run.now + 60 * SECOND));
    for _ in 0..5 {
        assert!(run.sample(5, 0.9).actions.is_empty());
    }
    assert!(
        run.sample(5, 0.01).actions.is_empty(),
        "one good sample is not enough"
    );
    let decision = run.sample(5, 0.02);
    assert_eq!(events(&decision), vec![Event::Cleared]);
    let note = decision.notes().next().unwrap();
    assert_eq!(note.samples["error_rate"], vec![0.01, 0.02]);
    assert_eq!(
        run.status(),
        json!({"state": "cleared", "rung": 0, "runs": 1, "signals": {"error_rate": 0.02}})
    );
    // Cleared holds while the signal is good, and through the end of the old window.
    for _ in 0..30 {
        assert!(run.sample(5, 0.01).actions.is_empty());
    }
    assert_eq!(run.state(), LadderState::Cleared);
}

#[test]
fn samples_before_the_rung_completes_do_not_count_for_its_window() {
    let mut run = Run::new(&config());
    let take = run.start();
    // Good samples while the request runs: the window has not opened.
    for _ in 0..4 {
        assert!(run.sample(5, 0.01).actions.is_empty());
    }
    assert_eq!(run.state(), LadderState::Acting);
    run.done(take.msg_id, RungOutcome::Completed);
    assert!(run.sample(5, 0.01).actions.is_empty());
    assert_eq!(run.state(), LadderState::Verifying);
    assert_eq!(events(&run.sample(5, 0.01)), vec![Event::Cleared]);
}

#[test]
fn cleared_holds_until_a_signal_turns_bad_again_then_max_runs_decides() {
    // max_runs 1: the second time it turns bad, the ladder is exhausted.
    let mut run = Run::new(&config());
    let take = run.start();
    run.done(take.msg_id, RungOutcome::Completed);
    run.sample(5, 0.01);
    run.sample(5, 0.01);
    assert_eq!(run.state(), LadderState::Cleared);
    assert!(run.sample(5, 0.2).actions.is_empty());
    let decision = run.sample(5, 0.2);
    assert_eq!(decision.takes().count(), 0);
    assert!(matches!(events(&decision)[..], [Event::Exhausted { .. }]));
    assert_eq!(
        run.status(),
        json!({"state": "exhausted", "rung": 0, "runs": 1, "signals": {"error_rate": 0.2}})
    );

    // max_runs 2: a new run from rung 0.
    let mut run = Run::new(&LadderConfig {
        max_runs: 2,
        ..config()
    });
    let take = run.start();
    run.done(take.msg_id, RungOutcome::Completed);
    run.sample(5, 0.01);
    run.sample(5, 0.01);
    run.sample(5, 0.2);
    let take = only_take(&run.sample(5, 0.25));
    assert_eq!((take.msg_id, take.run, take.rung), (2, 2, 0));
    assert_eq!(
        take.why.to_json(),
        json!({"signals": {"error_rate": [0.2, 0.25]}, "run": 2, "rung": 0})
    );
    assert_eq!(run.ladder.runs(), 2);
}

#[test]
fn a_window_that_ends_without_clearing_takes_the_next_rung() {
    let mut run = Run::new(&config());
    let take = run.start();
    run.done(take.msg_id, RungOutcome::Completed);
    let opened = run.now;
    for value in [0.4, 0.01, 0.5, 0.6, 0.02, 0.7, 0.8, 0.9, 0.1, 0.2, 0.3] {
        assert!(run.sample(5, value).actions.is_empty());
    }
    assert_eq!(run.now, opened + 55 * SECOND);
    run.now += 4 * SECOND + 999;
    assert!(
        run.step(Input::Tick { at: run.now }).actions.is_empty(),
        "the window is open until 60 s after the completion"
    );
    run.now += 1;
    let decision = run.step(Input::Tick { at: run.now });
    assert_eq!(events(&decision), vec![Event::NotCleared]);
    let take = only_take(&decision);
    assert_eq!((take.msg_id, take.run, take.rung), (2, 1, 1));
    assert_eq!(take.lane, Lane::Traffic);
    assert_eq!(
        take.why.to_json(),
        json!({
            "signals": {"error_rate": [0.4, 0.01, 0.5, 0.6, 0.02, 0.7, 0.8, 0.9, 0.1, 0.2, 0.3]},
            "run": 1,
            "rung": 1
        })
    );
    assert_eq!(
        run.status(),
        json!({"state": "acting", "rung": 1, "runs": 1, "signals": {"error_rate": 0.3}})
    );
}

#[test]
fn a_sample_after_the_window_ends_it_first() {
    let mut run = Run::new(&config());
    let take = run.start();
    run.done(take.msg_id, RungOutcome::Completed);
    run.sample(30, 0.3);
    // 60 s after the completion: outside the window, which ends without clearing; the sample
    // then counts for nothing (the next rung is acting).
    let decision = run.sample(30, 0.01);
    assert_eq!(only_take(&decision).rung, 1);
    assert_eq!(
        only_take(&decision).why.to_json(),
        json!({"signals": {"error_rate": [0.3]}, "run": 1, "rung": 1})
    );
}

#[test]
fn a_refused_rung_is_skipped_at_once() {
    let mut run = Run::new(&config());
    let take = run.start();
    let decision = run.done(take.msg_id, RungOutcome::Refused);
    assert_eq!(events(&decision), vec![Event::Skipped]);
    let next = only_take(&decision);
    assert_eq!((next.msg_id, next.run, next.rung), (2, 1, 1));
    assert_eq!(
        next.why.to_json(),
        json!({"signals": {"error_rate": [0.2, 0.3]}, "run": 1, "rung": 1}),
        "a skip keeps the samples that caused the rung it skipped"
    );
    // A completion of the skipped rung, or any msg_id but the one acting, changes nothing.
    let before = run.ladder.clone();
    assert!(run
        .done(take.msg_id, RungOutcome::Completed)
        .actions
        .is_empty());
    assert!(run.done(99, RungOutcome::Failed).actions.is_empty());
    assert_eq!(run.ladder, before);
}

#[test]
fn a_failed_rung_ends_the_ladder_in_exhausted() {
    let mut run = Run::new(&config());
    let take = run.start();
    let decision = run.done(take.msg_id, RungOutcome::Failed);
    assert_eq!(decision.takes().count(), 0);
    match &events(&decision)[..] {
        [Event::Exhausted { reason }] => assert!(reason.contains("failed"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        run.status(),
        json!({"state": "exhausted", "rung": 0, "runs": 1, "signals": {"error_rate": 0.3}})
    );
    // Nothing more happens.
    for _ in 0..50 {
        assert!(run.sample(5, 0.9).actions.is_empty());
        assert!(run.tick(60).actions.is_empty());
    }
    assert!(run.no_data(5, "timeout").actions.is_empty());
    assert_eq!(
        run.state(),
        LadderState::Exhausted,
        "exhausted also without data"
    );
    assert_eq!(run.status()["signals"]["error_rate"], Value::Null);
    let answer = run.approve(2, "alice").answer.unwrap();
    assert_eq!(answer.unwrap_err().code(), 22);
}

#[test]
fn the_outcome_of_a_reply_code() {
    assert_eq!(RungOutcome::of_code(None), RungOutcome::Completed);
    assert_eq!(RungOutcome::of_code(Some(13)), RungOutcome::Failed);
    assert_eq!(RungOutcome::of_code(Some(14)), RungOutcome::Failed);
    for code in [10, 11, 12, 20, 22] {
        assert_eq!(RungOutcome::of_code(Some(code)), RungOutcome::Refused);
    }
}

/// Runs through rungs 0 and 1 without clearing: rung 2 (the rollback) awaits approval.
fn at_the_rollback(run: &mut Run) {
    let take = run.start();
    let take = run.not_cleared(&take).expect("rung 1");
    assert_eq!(take.rung, 1);
    assert!(run
        .done(take.msg_id, RungOutcome::Completed)
        .actions
        .is_empty());
    for _ in 0..11 {
        run.sample(5, 0.4);
    }
    let decision = run.tick(5);
    assert_eq!(
        decision.takes().count(),
        0,
        "the rollback is not taken unapproved"
    );
    assert_eq!(
        events(&decision),
        vec![Event::NotCleared, Event::AwaitingApproval]
    );
}

#[test]
fn a_destructive_rung_waits_for_approval() {
    let mut run = Run::new(&config());
    at_the_rollback(&mut run);
    assert_eq!(
        run.status(),
        json!({"state": "awaiting_approval", "rung": 2, "runs": 1, "signals": {"error_rate": 0.4}})
    );
    assert_eq!(run.ladder.awaiting_approval(), Some(2));
    // Time and samples change nothing while it waits.
    for _ in 0..30 {
        assert_eq!(run.sample(5, 0.9).takes().count(), 0);
        assert_eq!(run.tick(60).takes().count(), 0);
    }
    for wrong in [0, 1, 3, 9] {
        let refusal = run.approve(wrong, "alice").answer.unwrap().unwrap_err();
        assert_eq!(refusal.code(), 22, "{refusal}");
    }
    let decision = run.approve(2, "alice");
    assert_eq!(decision.answer, Some(Ok(2)));
    assert_eq!(
        events(&decision),
        vec![Event::Approved {
            by: "alice".to_owned()
        }]
    );
    let take = only_take(&decision);
    assert_eq!((take.msg_id, take.run, take.rung), (3, 1, 2));
    assert_eq!(take.lane, Lane::Schema);
    assert_eq!(
        take.why.to_json(),
        json!({
            "signals": {"error_rate": vec![0.4; 11]},
            "run": 1,
            "rung": 2,
            "approved_by": "alice"
        })
    );
    let again = run.approve(2, "bob").answer.unwrap().unwrap_err();
    assert_eq!(again.code(), 22);
    assert!(
        again.to_string().contains("does not await approval"),
        "{again}"
    );
}

#[test]
fn a_pre_authorised_destructive_rung_runs_without_approval() {
    let mut config = config();
    config.rungs = vec![Rung {
        action: json!({"type": "rollback", "version": 3}),
        approval: false,
    }];
    let mut run = Run::new(&config);
    let take = run.start();
    assert_eq!(take.why.approved_by, None);
    assert!(!take
        .why
        .to_json()
        .as_object()
        .unwrap()
        .contains_key("approved_by"));
    // And a kill switch the estate asks to approve waits.
    let mut config = self::config();
    config.rungs[0].approval = true;
    let mut run = Run::new(&config);
    run.sample(5, 0.2);
    assert_eq!(run.sample(5, 0.2).takes().count(), 0);
    assert_eq!(run.state(), LadderState::AwaitingApproval);
    assert_eq!(run.ladder.status().rung, Some(0));
}

#[test]
fn default_approval_is_for_rollback_and_restore() {
    let approval: Vec<bool> = four_rungs().iter().map(|r| r.approval).collect();
    assert_eq!(approval, [false, false, true, true]);
    assert!(!Rung::new(json!({"type": "migrate", "version": 3})).approval);
    assert!(!Rung::new(json!({"type": "enable_feature", "feature": "x"})).approval);
}

#[test]
fn after_the_last_rung_a_new_run_while_runs_are_below_max_runs() {
    let mut config = config();
    config.max_runs = 2;
    config.rungs.truncate(2);
    let mut run = Run::new(&config);
    let first = run.start();
    let second = run.not_cleared(&first).unwrap();
    assert_eq!((second.run, second.rung), (1, 1));
    let decision = {
        run.done(second.msg_id, RungOutcome::Completed);
        for _ in 0..11 {
            run.sample(5, 0.4);
        }
        run.tick(5)
    };
    assert_eq!(
        events(&decision),
        vec![Event::NotCleared, Event::RunStarted]
    );
    let third = only_take(&decision);
    assert_eq!((third.msg_id, third.run, third.rung), (3, 2, 0));
    let fourth = run.not_cleared(&third).unwrap();
    assert_eq!((fourth.msg_id, fourth.run, fourth.rung), (4, 2, 1));
    run.done(fourth.msg_id, RungOutcome::Completed);
    for _ in 0..11 {
        run.sample(5, 0.4);
    }
    let decision = run.tick(5);
    assert_eq!(decision.takes().count(), 0);
    match &events(&decision)[..] {
        [Event::NotCleared, Event::Exhausted { reason }] => {
            assert!(reason.contains("run 2 of 2"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        run.status(),
        json!({"state": "exhausted", "rung": 1, "runs": 2, "signals": {"error_rate": 0.4}})
    );
    // Refusals up the last rung also end the run.
    let mut run = Run::new(&config);
    let first = run.start();
    let second = only_take(&run.done(first.msg_id, RungOutcome::Refused));
    let decision = run.done(second.msg_id, RungOutcome::Refused);
    let third = only_take(&decision);
    assert_eq!((third.run, third.rung), (2, 0));
    let fourth = only_take(&run.done(third.msg_id, RungOutcome::Refused));
    assert!(run
        .done(fourth.msg_id, RungOutcome::Refused)
        .takes()
        .next()
        .is_none());
    assert_eq!(run.state(), LadderState::Exhausted);
}

#[test]
fn no_data_pauses_at_once_whatever_the_state() {
    type Reach = Box<dyn Fn(&mut Run)>;
    let cases: Vec<(&str, Reach)> = vec![
        (
            "watching",
            Box::new(|run: &mut Run| {
                run.sample(5, 0.2);
            }),
        ),
        (
            "acting",
            Box::new(|run: &mut Run| {
                run.start();
            }),
        ),
        (
            "verifying",
            Box::new(|run: &mut Run| {
                let take = run.start();
                run.done(take.msg_id, RungOutcome::Completed);
            }),
        ),
        ("awaiting_approval", Box::new(at_the_rollback)),
        (
            "cleared",
            Box::new(|run: &mut Run| {
                let take = run.start();
                run.done(take.msg_id, RungOutcome::Completed);
                run.sample(5, 0.0);
                run.sample(5, 0.0);
            }),
        ),
    ];
    for (state, reach) in cases {
        let mut run = Run::new(&config());
        reach(&mut run);
        assert_eq!(run.status()["state"], state);
        let rung = run.status()["rung"].clone();
        let decision = run.no_data(5, "empty vector");
        assert_eq!(decision.takes().count(), 0);
        match &events(&decision)[..] {
            [Event::Paused { no_data }] => {
                assert_eq!(no_data["error_rate"], "empty vector")
            }
            other => panic!("{state}: {other:?}"),
        }
        assert_eq!(
            run.status(),
            json!({"state": "paused_no_data", "rung": rung, "runs": run.ladder.runs(), "signals": {"error_rate": null}}),
            "{state}"
        );
        // Nothing escalates while paused, whatever time does.
        for _ in 0..20 {
            assert_eq!(run.tick(60).takes().count(), 0);
            assert_eq!(run.no_data(5, "timeout").takes().count(), 0);
        }
        assert_eq!(run.state(), LadderState::PausedNoData);
        // Data returns: back where it paused.
        let decision = run.sample(5, 0.01);
        assert_eq!(events(&decision), vec![Event::Resumed], "{state}");
        assert_eq!(run.status()["state"], state);
    }
}

#[test]
fn nan_and_infinities_count_as_no_data() {
    for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut run = Run::new(&config());
        run.sample(5, 0.2);
        let decision = run.sample(5, value);
        assert!(matches!(events(&decision)[..], [Event::Paused { .. }]));
        assert_eq!(run.state(), LadderState::PausedNoData);
        assert_eq!(run.status()["signals"]["error_rate"], Value::Null);
        // The streak was broken: two more bad samples are needed.
        assert!(run.sample(5, 0.2).takes().next().is_none());
        assert_eq!(only_take(&run.sample(5, 0.2)).rung, 0);
    }
    assert_eq!(
        Sample::Value(f64::NAN).normalized(),
        Sample::NoData("the value is NaN".to_owned())
    );
}

#[test]
fn a_signal_without_data_holds_the_others_back() {
    let mut config = config();
    config.signals.push(signal("latency", 0.5));
    let mut run = Run::new(&config);
    let both = |error_rate: Sample, latency: Sample| Input::Samples {
        at: 0,
        values: vec![
            ("error_rate".to_owned(), error_rate),
            ("latency".to_owned(), latency),
        ],
    };
    run.step(both(
        Sample::Value(0.2),
        Sample::NoData("query error: parse error".to_owned()),
    ));
    assert_eq!(run.state(), LadderState::PausedNoData);
    for _ in 0..5 {
        let decision = run.step(Input::Samples {
            at: 0,
            values: vec![("error_rate".to_owned(), Sample::Value(0.9))],
        });
        assert_eq!(decision.takes().count(), 0);
    }
    assert_eq!(
        run.status(),
        json!({"state": "paused_no_data", "rung": null, "runs": 0, "signals": {"error_rate": 0.9, "latency": null}})
    );
    // latency returns: resumed, and counting starts afresh.
    let decision = run.step(both(Sample::Value(0.9), Sample::Value(0.1)));
    assert_eq!(events(&decision), vec![Event::Resumed]);
    let decision = run.step(both(Sample::Value(0.9), Sample::Value(0.1)));
    let take = only_take(&decision);
    assert_eq!(
        take.why.to_json(),
        json!({"signals": {"error_rate": [0.9, 0.9]}, "run": 1, "rung": 0}),
        "only the bad signal is the cause"
    );
    // Clearing needs every signal good.
    run.step(Input::RungDone {
        at: 0,
        msg_id: take.msg_id,
        outcome: RungOutcome::Completed,
    });
    for _ in 0..3 {
        run.step(both(Sample::Value(0.01), Sample::Value(0.9)));
    }
    assert_eq!(run.state(), LadderState::Verifying);
    run.step(both(Sample::Value(0.01), Sample::Value(0.1)));
    assert_eq!(run.state(), LadderState::Verifying);
    run.step(both(Sample::Value(0.01), Sample::Value(0.1)));
    assert_eq!(run.state(), LadderState::Cleared);
}

#[test]
fn resuming_starts_a_fresh_verify_window() {
    let mut run = Run::new(&config());
    let take = run.start();
    run.done(take.msg_id, RungOutcome::Completed);
    let opened = run.now;
    run.sample(5, 0.01);
    run.no_data(25, "Prometheus unreachable: connection refused");
    let resumed = run.sample(20, 0.4);
    assert_eq!(events(&resumed), vec![Event::Resumed]);
    assert_eq!(run.now, opened + 50 * SECOND);
    assert_eq!(run.ladder.verify_until(), Some(run.now + 60 * SECOND));
    // The old window would have ended at opened + 60 s: nothing happens then.
    for _ in 0..11 {
        assert_eq!(run.sample(5, 0.4).takes().count(), 0);
    }
    let decision = run.tick(5);
    assert_eq!(only_take(&decision).rung, 1);
    assert_eq!(
        only_take(&decision).why.signals["error_rate"].len(),
        12,
        "the sample that resumed counts, in the new window: {:?}",
        only_take(&decision).why
    );
}

#[test]
fn a_rung_that_ends_while_paused_is_followed_up_when_data_returns() {
    // Completed while paused: verifying when data returns, with a fresh window.
    let mut run = Run::new(&config());
    let take = run.start();
    run.no_data(5, "timeout");
    assert!(run
        .done(take.msg_id, RungOutcome::Completed)
        .actions
        .is_empty());
    assert_eq!(run.state(), LadderState::PausedNoData);
    run.tick(120);
    run.sample(5, 0.3);
    assert_eq!(run.state(), LadderState::Verifying);
    assert_eq!(run.ladder.verify_until(), Some(run.now + 60 * SECOND));

    // Refused while paused: the next rung is taken when data returns, not before.
    let mut run = Run::new(&config());
    let take = run.start();
    run.no_data(5, "timeout");
    let decision = run.done(take.msg_id, RungOutcome::Refused);
    assert_eq!(events(&decision), vec![Event::Skipped]);
    assert_eq!(decision.takes().count(), 0);
    assert_eq!(run.status()["rung"], 1);
    let decision = run.sample(5, 0.3);
    assert_eq!(events(&decision), vec![Event::Resumed]);
    assert_eq!(only_take(&decision).rung, 1);

    // Approved while paused: taken when data returns.
    let mut run = Run::new(&config());
    at_the_rollback(&mut run);
    run.no_data(5, "several series");
    let decision = run.approve(2, "alice");
    assert_eq!(decision.answer, Some(Ok(2)));
    assert_eq!(decision.takes().count(), 0);
    assert_eq!(run.state(), LadderState::PausedNoData);
    let take = only_take(&run.sample(5, 0.3));
    assert_eq!(take.rung, 2);
    assert_eq!(take.why.approved_by.as_deref(), Some("alice"));
}

#[test]
fn no_data_breaks_the_streak_before_a_run() {
    let mut run = Run::new(&config());
    run.sample(5, 0.2);
    run.no_data(5, "empty vector");
    assert!(run.sample(5, 0.2).takes().next().is_none());
    assert!(run.sample(5, 0.2).takes().next().is_some());
}

#[test]
fn a_verify_window_without_samples_is_no_data_not_an_escalation() {
    let mut run = Run::new(&config());
    let take = run.start();
    run.done(take.msg_id, RungOutcome::Completed);
    let decision = run.tick(60);
    assert_eq!(decision.takes().count(), 0);
    match &events(&decision)[..] {
        [Event::Paused { no_data }] => assert_eq!(
            no_data["error_rate"],
            "no sample within the 60 s verify window"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(run.status()["signals"]["error_rate"], Value::Null);
    assert_eq!(events(&run.sample(5, 0.3)), vec![Event::Resumed]);
    assert_eq!(run.state(), LadderState::Verifying);
}

#[test]
fn samples_of_unknown_signals_are_ignored() {
    let mut run = Run::new(&config());
    for _ in 0..5 {
        let decision = run.step(Input::Samples {
            at: 0,
            values: vec![("other".to_owned(), Sample::NoData("x".to_owned()))],
        });
        assert!(decision.actions.is_empty());
    }
    assert_eq!(run.state(), LadderState::Watching);
}

#[test]
fn journal_notes_carry_the_state_and_the_samples() {
    let mut run = Run::new(&config());
    run.sample(5, 0.2);
    let decision = run.sample(5, 0.3);
    let note = decision.notes().next().unwrap();
    assert_eq!(
        note.to_json(),
        json!({
            "at": 10_000,
            "event": "run_started",
            "state": "acting",
            "runs": 1,
            "rung": 0,
            "samples": {"error_rate": [0.2, 0.3]}
        })
    );
    let note = run.no_data(5, "timeout").notes().next().unwrap().clone();
    assert_eq!(
        note.to_json(),
        json!({
            "at": 15_000,
            "event": "paused",
            "no_data": {"error_rate": "timeout"},
            "state": "paused_no_data",
            "runs": 1,
            "rung": 0,
            "samples": {}
        })
    );
    assert!(decision
        .actions
        .iter()
        .any(|a| matches!(a, Action::Take(_))));
}

#[test]
fn a_snapshot_resumes_where_it_was_and_never_takes_a_rung_again() {
    let mut run = Run::new(&config());
    let take = run.start();
    let text = serde_json::to_string(&run.ladder).unwrap();
    let restored: Ladder = serde_json::from_str(&text).unwrap();
    assert_eq!(restored, run.ladder);
    assert_eq!(
        restored.outstanding(),
        Some(&take),
        "the same Take, same msg_id"
    );
    // Replaying the inputs gives the same ladder, its actions dropped.
    let inputs = vec![
        Input::Samples {
            at: 5000,
            values: vec![("error_rate".to_owned(), Sample::Value(0.2))],
        },
        Input::Samples {
            at: 10_000,
            values: vec![("error_rate".to_owned(), Sample::Value(0.3))],
        },
    ];
    let replayed = Ladder::replay(&config(), &inputs).unwrap();
    assert_eq!(replayed, run.ladder);
    // Inputs round-trip through JSON too (a journal can hold them).
    let journaled: Vec<Input> =
        serde_json::from_str(&serde_json::to_string(&inputs).unwrap()).unwrap();
    assert_eq!(journaled, inputs);
    // Continuing the restored ladder: the next Take has the next msg_id.
    let mut restored = Run {
        ladder: restored,
        now: run.now,
    };
    let next = only_take(&restored.done(take.msg_id, RungOutcome::Refused));
    assert_eq!(next.msg_id, take.msg_id + 1);
}

#[test]
fn rearm_after_exhausted_watches_again_with_fresh_runs_and_msg_ids_that_go_on() {
    let mut run = Run::new(&config());
    let take = run.start();
    run.done(take.msg_id, RungOutcome::Failed);
    let decision = run.ladder.rearm(run.now);
    assert_eq!(events(&decision), vec![Event::Rearmed]);
    assert_eq!(
        run.status(),
        json!({"state": "watching", "rung": 0, "runs": 0, "signals": {"error_rate": 0.3}})
    );
    let take = run.start();
    assert_eq!((take.msg_id, take.run, take.rung), (2, 1, 0));
    // A ladder that is not exhausted resumes as it was.
    let before = run.ladder.clone();
    assert!(run.ladder.rearm(run.now).actions.is_empty());
    assert_eq!(run.ladder, before);
}

#[test]
fn the_clock_never_goes_back() {
    let mut run = Run::new(&config());
    let take = run.start();
    run.done(take.msg_id, RungOutcome::Completed);
    let until = run.ladder.verify_until().unwrap();
    assert!(run.step(Input::Tick { at: 0 }).actions.is_empty());
    assert_eq!(run.ladder.now(), run.now);
    assert_eq!(run.ladder.verify_until(), Some(until));
}

#[test]
fn config_errors_name_the_key() {
    let error = |change: &dyn Fn(&mut LadderConfig)| -> ConfigError {
        let mut config = config();
        change(&mut config);
        Ladder::new(&config).unwrap_err()
    };
    type Change = Box<dyn Fn(&mut LadderConfig)>;
    let cases: Vec<(Change, Key, &str)> = vec![
        (
            Box::new(|c| c.bad_samples = 0),
            Key::Ladder("bad_samples"),
            "is 0",
        ),
        (
            Box::new(|c| c.signals.clear()),
            Key::Ladder("signals"),
            "no [[ladder.signals]]",
        ),
        (
            Box::new(|c| c.rungs.clear()),
            Key::Ladder("rungs"),
            "no [[ladder.rungs]]",
        ),
        (
            Box::new(|c| c.signals.push(signal("error_rate", 1.0))),
            Key::Signal(1, "name"),
            "used twice",
        ),
        (
            Box::new(|c| c.prometheus = "127.0.0.1:9090".to_owned()),
            Key::Ladder("prometheus"),
            "is not an http:// URL",
        ),
        (
            Box::new(|c| c.prometheus = "https://prometheus:9090".to_owned()),
            Key::Ladder("prometheus"),
            "https is not supported",
        ),
        (
            Box::new(|c| c.prometheus = "http://prometheus:9090/?x=1".to_owned()),
            Key::Ladder("prometheus"),
            "has a query or a fragment",
        ),
        (
            Box::new(|c| c.prometheus = "http://".to_owned()),
            Key::Ladder("prometheus"),
            "names no host",
        ),
        (
            Box::new(|c| c.prometheus = "http://p:9090/api/v1/query".to_owned()),
            Key::Ladder("prometheus"),
            "give the base URL",
        ),
        (
            Box::new(|c| c.signals[0].query = " ".to_owned()),
            Key::Signal(0, "query"),
            "is empty",
        ),
        (
            Box::new(|c| c.signals[0].above = f64::NAN),
            Key::Signal(0, "above"),
            "not a finite number",
        ),
        (
            Box::new(|c| c.rungs[1].action = json!({"type": "switch_trafic"})),
            Key::Rung(1, "action"),
            "unknown action type \"switch_trafic\"",
        ),
        (
            Box::new(|c| c.rungs[1].action = json!({"type": "status"})),
            Key::Rung(1, "action"),
            "status changes nothing",
        ),
        (
            Box::new(|c| c.rungs[1].action = json!({"type": "force_version", "version": 1})),
            Key::Rung(1, "action"),
            "force_version",
        ),
        (
            Box::new(|c| {
                c.rungs[0].action = json!({"type": "disable_feature", "feature": "x", "flag": "y"})
            }),
            Key::Rung(0, "action"),
            "disable_feature has no field \"flag\"",
        ),
        (
            Box::new(|c| c.rungs[2].action = json!({"type": "rollback", "version": 0})),
            Key::Rung(2, "action"),
            "rollback:",
        ),
        (
            Box::new(|c| c.verify_seconds = 5),
            Key::Ladder("verify_seconds"),
            "no rung could ever clear",
        ),
        (
            Box::new(|c| c.max_runs = 0),
            Key::Ladder("max_runs"),
            "is 0",
        ),
        (
            Box::new(|c| c.interval_seconds = 0),
            Key::Ladder("interval_seconds"),
            "is 0",
        ),
    ];
    for (change, key, says) in cases {
        let error = error(&*change);
        assert_eq!(error.key, key, "{error}");
        assert!(error.problem.contains(says), "{says:?} in {error}");
        assert!(error.to_string().starts_with(&key.to_string()));
    }
    assert_eq!(Key::Rung(1, "action").to_string(), "ladder.rungs[1].action");
    assert_eq!(
        Key::Signal(0, "above").to_string(),
        "ladder.signals[0].above"
    );
    assert_eq!(Key::Ladder("max_runs").to_string(), "ladder.max_runs");
}

// ---------------------------------------------------------------------------------------------
// The estate

const LAYERS: &str = r#"schema_version = 3

[[migrations]]
version = 1
name = "create_users"
up_seconds = 5
down_seconds = 5

[[migrations]]
version = 2
name = "add_users_email_index"
up_seconds = 5
down_seconds = 5

[[migrations]]
version = 3
name = "add_checkout_columns"
up_seconds = 5
down_seconds = 5

[flags]
new_checkout = true

[traffic]
live = "green"
blue = "healthy"
green = "healthy"

[[backups]]
name = "users_backup_20240115"
rows = 100000
schema_version = 2
restore_seconds = 60
"#;

const LADDER: &str = r#"
[ladder]
prometheus = "http://127.0.0.1:9090"
bad_samples = 2

[[ladder.signals]]
name = "error_rate"
query = "sum(rate(http_requests_total{code=~\"5..\"}[1m])) / sum(rate(http_requests_total[1m]))"
above = 0.05

[[ladder.signals]]
name = "p99_latency"
query = "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[1m])))"
above = 2

[[ladder.rungs]]
action = {type = "disable_feature", feature = "new_checkout"}

[[ladder.rungs]]
action = {type = "switch_traffic", from = "green", to = "blue"}

[[ladder.rungs]]
action = {type = "rollback", version = 3}

[[ladder.rungs]]
action = {type = "restore", backup = "users_backup_20240115"}
approval = false
"#;

#[test]
fn the_estate_reads_the_ladder_with_its_defaults() {
    let estate = Estate::from_toml(&format!("{LAYERS}{LADDER}"), "estate.toml").unwrap();
    let ladder = estate.ladder.expect("a ladder");
    assert_eq!(ladder.prometheus, "http://127.0.0.1:9090");
    assert_eq!(
        (
            ladder.interval_seconds,
            ladder.bad_samples,
            ladder.verify_seconds,
            ladder.max_runs
        ),
        (5, 2, 60, 1)
    );
    assert_eq!(ladder.signals[1].name, "p99_latency");
    assert_eq!(
        ladder.signals[1].above, 2.0,
        "an integer threshold is a number"
    );
    let approval: Vec<bool> = ladder.rungs.iter().map(|r| r.approval).collect();
    assert_eq!(
        approval,
        [false, false, true, false],
        "restore pre-authorised"
    );
    assert_eq!(
        ladder.rungs[1].action,
        json!({"type": "switch_traffic", "from": "green", "to": "blue"})
    );
    Ladder::new(&ladder).unwrap();
    assert!(Estate::from_toml(LAYERS, "estate.toml")
        .unwrap()
        .ladder
        .is_none());
    assert!(Estate::example().ladder.is_none());
}

#[test]
fn a_real_layer_is_checked_when_the_node_runs() {
    // A flag file's flags are read at start: a rung for a flag [flags] does not list is valid.
    let estate = format!(
        "[flagd]\nfile = \"flags.json\"\n{}",
        &LADDER[..LADDER
            .find("[[ladder.rungs]]\naction = {type = \"switch")
            .unwrap()]
    )
    .replace("new_checkout", "other_flag");
    let estate = Estate::from_toml(&estate, "estate.toml").unwrap();
    assert_eq!(estate.ladder.unwrap().rungs.len(), 1);
}

/// Starts the binary on `estate` (written to a file named `bad.toml`); returns the exit code
/// and stderr.
fn start(estate: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, estate).unwrap();
    let mut child = Command::new(NODE)
        .arg("--estate")
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the node starts");
    let written = child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"src":"c","dest":"n1","body":{"type":"status","msg_id":1}}"#);
    if let Err(e) = written {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stderr).unwrap(),
        String::from_utf8(output.stdout).unwrap(),
    )
}

/// The 1-based line of `estate` that contains `needle` (the first one at or after `after`).
fn line_of(estate: &str, needle: &str, after: usize) -> usize {
    estate
        .lines()
        .enumerate()
        .skip(after)
        .find(|(_, l)| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} in the estate"))
        .0
        + 1
}

/// `estate` with `replace` (which must occur) swapped for `by`.
fn with(estate: &str, replace: &str, by: &str) -> String {
    assert!(estate.contains(replace), "{replace:?}");
    estate.replacen(replace, by, 1)
}

#[test]
fn a_good_ladder_starts() {
    let (code, stderr, stdout) = start(&format!("{LAYERS}{LADDER}"));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(r#""type":"status_ok""#), "{stdout}");
}

#[test]
fn a_ladder_the_node_cannot_use_stops_the_start_with_one_line_naming_file_line_and_key() {
    let full = format!("{LAYERS}{LADDER}");
    // (estate, the text on the line named, the key, what the line says).
    let cases: Vec<(String, &str, &str, &str)> = vec![
        (
            with(&full, "type = \"switch_traffic\"", "type = \"switch_trafic\""),
            "switch_trafic",
            "ladder.rungs[1].action",
            "unknown action type \"switch_trafic\"; rung types: rollback, migrate, disable_feature, enable_feature, switch_traffic, restore",
        ),
        (
            with(&full, "query = \"sum(rate", "# query = \"sum(rate"),
            "[[ladder.signals]]",
            "ladder.signals[0].query",
            "missing; give the PromQL query of the signal",
        ),
        (
            with(&full, "above = 0.05", "above = \"5%\""),
            "above = \"5%\"",
            "ladder.signals[0].above",
            "\"5%\" is not a number",
        ),
        (
            with(&full, "above = 2", "above = true"),
            "above = true",
            "ladder.signals[1].above",
            "true is not a number",
        ),
        (
            with(&full, "feature = \"new_checkout\"}", "feature = \"old_checkout\"}"),
            "old_checkout",
            "ladder.rungs[0].action",
            "flag \"old_checkout\" is not in the estate's [flags]; known flags: new_checkout",
        ),
        (
            with(&full, "[traffic]\nlive = \"green\"\nblue = \"healthy\"\ngreen = \"healthy\"\n", ""),
            "switch_traffic",
            "ladder.rungs[1].action",
            "a switch_traffic rung acts on blue-green traffic, which this estate does not describe",
        ),
        (
            format!(
                "[flags]\nnew_checkout = true\n[traffic]\nlive = \"green\"\nblue = \"healthy\"\ngreen = \"healthy\"\n{LADDER}"
            ),
            "type = \"rollback\"",
            "ladder.rungs[2].action",
            "a rollback rung acts on a schema, which this estate does not describe",
        ),
        (
            with(&full, "[[backups]]\nname = \"users_backup_20240115\"\nrows = 100000\nschema_version = 2\nrestore_seconds = 60\n", ""),
            "type = \"restore\"",
            "ladder.rungs[3].action",
            "a restore rung acts on backups, which this estate does not describe",
        ),
        (
            with(&full, "backup = \"users_backup_20240115\"}", "backup = \"nightly\"}"),
            "nightly",
            "ladder.rungs[3].action",
            "backup \"nightly\" is not in the estate's [[backups]]",
        ),
        (
            with(&full, "version = 3}", "version = 7}"),
            "version = 7}",
            "ladder.rungs[2].action",
            "migration 7 is not in the estate's [[migrations]]",
        ),
        (
            with(&full, "bad_samples = 2", "bad_samples = 0"),
            "bad_samples = 0",
            "ladder.bad_samples",
            "is 0",
        ),
        (
            with(&full, "bad_samples = 2", "bad_samples = -1"),
            "bad_samples = -1",
            "ladder.bad_samples",
            "expected a whole number from 0 to 4294967295",
        ),
        (
            format!("{LAYERS}\n[ladder]\nprometheus = \"http://p:9090\"\n[[ladder.rungs]]\naction = {{type = \"disable_feature\", feature = \"new_checkout\"}}\n"),
            "[ladder]",
            "ladder.signals",
            "there is no [[ladder.signals]]",
        ),
        (
            full[..full.find("[[ladder.rungs]]").unwrap()].to_owned(),
            "[ladder]",
            "ladder.rungs",
            "there is no [[ladder.rungs]]",
        ),
        (
            with(&full, "name = \"p99_latency\"", "name = 'error_rate'"),
            "name = 'error_rate'",
            "ladder.signals[1].name",
            "\"error_rate\" is used twice",
        ),
        (
            with(&full, "prometheus = \"http://", "prometheus = \"tcp://"),
            "prometheus",
            "ladder.prometheus",
            "\"tcp://127.0.0.1:9090\" is not an http:// URL",
        ),
        (
            with(&full, "prometheus = \"http://127.0.0.1:9090\"\n", ""),
            "[ladder]",
            "ladder.prometheus",
            "missing",
        ),
        (
            with(&full, "bad_samples = 2", "bad_samples = 2\nsamples = 3"),
            "samples = 3",
            "ladder.samples",
            "unknown field `samples`",
        ),
        (
            with(&full, "to = \"blue\"}", "to = \"blue\", msg_id = 7}"),
            "msg_id = 7",
            "ladder.rungs[1].action",
            "has msg_id",
        ),
        (
            with(&full, "approval = false", "approval = \"no\""),
            "approval = \"no\"",
            "ladder.rungs[3].approval",
            "expected true or false",
        ),
    ];
    for (estate, on_line, key, says) in cases {
        let (code, stderr, stdout) = start(&estate);
        assert_eq!(code, Some(2), "{key}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        let ladder_at = estate.lines().position(|l| l == "[ladder]").unwrap();
        let line = line_of(&estate, on_line, ladder_at);
        let expected = format!("bad.toml: line {line} (");
        assert!(stderr.contains(&expected), "{expected:?} in {stderr}");
        assert!(stderr.contains(&format!("): {key}: ")), "{key} in {stderr}");
        assert!(stderr.contains(says), "{says:?} in {stderr}");
        assert!(stderr.starts_with("rollback-node: "), "{stderr}");
    }
}
