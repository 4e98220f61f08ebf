//! Properties of the escalation ladder's pure core, over generated ladders (one or two signals,
//! one to four rungs of any kind with or without approval, `bad_samples` 1 to 3,
//! `interval_seconds` 1 to 5, `verify_seconds` from the shortest allowed to 20 s more,
//! `max_runs` 1 to 3) and generated inputs: samples good, bad, at the threshold, without data,
//! NaN or missing; time passing; the outcome of each Take (completed, refused, failed) or of a
//! msg_id the ladder never sent; approvals of the right rung or a wrong one.
//!
//! Each property is its own test, stated in its name and proved over the same generated traces:
//! - no data never escalates;
//! - no rung is passed over unless its request was refused;
//! - never more than `max_runs` runs;
//! - a destructive rung never runs unapproved;
//! - the ladder always ends — precisely: under any continuation where every Take is answered,
//!   approvals are given and samples come every interval, it reaches `exhausted` within a bound
//!   computed from the configuration when the signals stay bad, and a rest state (`watching`,
//!   `cleared` or `exhausted`) that takes nothing more when they stay good; `exhausted` takes
//!   nothing whatever comes; and no armed ladder takes more than `max_runs` × rungs Takes;
//! - a crash between any two inputs resumes without taking a rung twice, from a JSON snapshot
//!   or by replaying the inputs.
//!
//! Then an A/A test: a thousand runs of noise below the threshold at the default settings take
//! no rung, and the same harness with a real fault does (so the A/A can fail).

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence, TestRunner};
use rollback_node::core::ladder::{
    Event, Input, Ladder, LadderConfig, LadderDecision, LadderState, Millis, Rung, RungOutcome,
    Sample, Signal, Take,
};
use serde_json::json;
use std::sync::Mutex;

/// Generated traces per property (`PROPTEST_CASES` overrides).
const CASES: u32 = 1024;
/// Generated inputs per trace (exclusive upper bound).
const MAX_OPS: usize = 160;
/// Every signal's threshold.
const ABOVE: f64 = 1.0;

// ---------------------------------------------------------------------------------------------
// Generated ladders and inputs

#[derive(Debug, Clone)]
struct Setup {
    signals: usize,
    bad_samples: u32,
    interval_seconds: u64,
    verify_extra: u64,
    max_runs: u32,
    /// (kind, approval) per rung.
    rungs: Vec<(usize, bool)>,
    /// How often a sample is bad, in 1/8: the mood of the run.
    bad_eighths: u32,
}

const ACTIONS: [&str; 5] = [
    r#"{"type": "disable_feature", "feature": "new_checkout"}"#,
    r#"{"type": "switch_traffic", "from": "green", "to": "blue"}"#,
    r#"{"type": "rollback", "version": 3}"#,
    r#"{"type": "restore", "backup": "users_backup_20240115"}"#,
    r#"{"type": "enable_feature", "feature": "new_checkout"}"#,
];

const NAMES: [&str; 2] = ["error_rate", "latency"];

impl Setup {
    fn config(&self) -> LadderConfig {
        let mut config = LadderConfig::new(
            "http://prometheus:9090",
            NAMES[..self.signals]
                .iter()
                .map(|name| Signal {
                    name: (*name).to_owned(),
                    query: format!("{name}_query"),
                    above: ABOVE,
                })
                .collect(),
            self.rungs
                .iter()
                .map(|&(kind, approval)| Rung {
                    action: serde_json::from_str(ACTIONS[kind]).unwrap(),
                    approval,
                })
                .collect(),
        );
        config.bad_samples = self.bad_samples;
        config.interval_seconds = self.interval_seconds;
        config.verify_seconds =
            u64::from(self.bad_samples) * self.interval_seconds + self.verify_extra;
        config.max_runs = self.max_runs;
        config
    }
}

/// One sample of one signal.
#[derive(Debug, Clone, Copy)]
enum Reading {
    Good(f64),
    At,
    Bad(f64),
    NoData,
    NaN,
    Omitted,
}

impl Reading {
    fn sample(self) -> Option<Sample> {
        match self {
            Reading::Good(v) | Reading::Bad(v) => Some(Sample::Value(v)),
            Reading::At => Some(Sample::Value(ABOVE)),
            Reading::NoData => Some(Sample::NoData("empty vector".to_owned())),
            Reading::NaN => Some(Sample::Value(f64::NAN)),
            Reading::Omitted => None,
        }
    }
}

/// What happens next, before it is made an input against the ladder as it stands.
#[derive(Debug, Clone)]
enum Op {
    /// Samples, `dt` milliseconds after the last input.
    Sample { dt: u64, readings: Vec<Reading> },
    /// Time passes.
    Tick { dt: u64 },
    /// The outstanding Take's request ends so (or, with none, a msg_id never sent).
    Done(RungOutcome),
    /// A completion of a msg_id the ladder did not send, or of an earlier Take.
    Stale(u64),
    /// An approval: of the rung awaiting one (`None`), or of rung `i`.
    Approve(Option<usize>),
}

fn reading(bad_eighths: u32) -> BoxedStrategy<Reading> {
    prop_oneof![
        (8 - bad_eighths) * 4 => (0.0..=ABOVE).prop_map(Reading::Good),
        2 => Just(Reading::At),
        bad_eighths * 4 => (1.000_001..4.0f64).prop_map(Reading::Bad),
        2 => Just(Reading::NoData),
        1 => Just(Reading::NaN),
        1 => Just(Reading::Omitted),
    ]
    .boxed()
}

fn op(setup: &Setup) -> BoxedStrategy<Op> {
    let interval = setup.interval_seconds * 1000;
    let verify =
        (u64::from(setup.bad_samples) * setup.interval_seconds + setup.verify_extra) * 1000;
    let readings = prop::collection::vec(reading(setup.bad_eighths), setup.signals);
    prop_oneof![
        24 => ((interval / 2)..=(interval * 3 / 2), readings)
            .prop_map(|(dt, readings)| Op::Sample { dt, readings }),
        3 => (0..=verify * 3 / 2).prop_map(|dt| Op::Tick { dt }),
        5 => Just(Op::Done(RungOutcome::Completed)),
        2 => Just(Op::Done(RungOutcome::Refused)),
        1 => Just(Op::Done(RungOutcome::Failed)),
        1 => (0u64..6).prop_map(Op::Stale),
        3 => Just(Op::Approve(None)),
        1 => (0usize..5).prop_map(|i| Op::Approve(Some(i))),
    ]
    .boxed()
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        1usize..=2,
        1u32..=3,
        1u64..=5,
        0u64..=20,
        1u32..=3,
        prop::collection::vec((0usize..ACTIONS.len(), any::<bool>()), 1..=4),
        prop::sample::select(vec![1u32, 4, 7]),
    )
        .prop_map(
            |(signals, bad_samples, interval_seconds, verify_extra, max_runs, rungs, bad)| Setup {
                signals,
                bad_samples,
                interval_seconds,
                verify_extra,
                max_runs,
                rungs,
                bad_eighths: bad,
            },
        )
}

fn case() -> impl Strategy<Value = (Setup, Vec<Op>)> {
    setup().prop_flat_map(|setup| {
        let ops = prop::collection::vec(op(&setup), 1..MAX_OPS);
        (Just(setup), ops)
    })
}

/// Inputs made from the ops against the ladder as it stood, and what each did.
struct Trace {
    config: LadderConfig,
    inputs: Vec<Input>,
    decisions: Vec<LadderDecision>,
    /// The ladder before each input, and after the last (`before[i + 1]` is after input i).
    before: Vec<Ladder>,
}

impl Trace {
    fn after(&self, index: usize) -> &Ladder {
        &self.before[index + 1]
    }
}

/// The input `op` is, against `ladder` at `now`.
fn input(op: &Op, ladder: &Ladder, now: &mut Millis, index: usize) -> Input {
    match op {
        Op::Sample { dt, readings } => {
            *now += dt;
            Input::Samples {
                at: *now,
                values: readings
                    .iter()
                    .zip(NAMES)
                    .filter_map(|(r, name)| Some((name.to_owned(), r.sample()?)))
                    .collect(),
            }
        }
        Op::Tick { dt } => {
            *now += dt;
            Input::Tick { at: *now }
        }
        Op::Done(outcome) => Input::RungDone {
            at: *now,
            msg_id: ladder.outstanding().map_or(0, |t| t.msg_id),
            outcome: *outcome,
        },
        Op::Stale(back) => Input::RungDone {
            at: *now,
            msg_id: ladder
                .outstanding()
                .map_or(*back, |t| t.msg_id.saturating_sub(1 + back)),
            outcome: RungOutcome::Completed,
        },
        Op::Approve(which) => Input::Approve {
            at: *now,
            rung: which.unwrap_or_else(|| ladder.awaiting_approval().unwrap_or(0)),
            by: format!("admin{index}"),
        },
    }
}

fn drive(setup: &Setup, ops: &[Op]) -> Trace {
    let config = setup.config();
    let mut ladder = Ladder::new(&config).expect("generated ladders are valid");
    let mut trace = Trace {
        config,
        inputs: Vec::new(),
        decisions: Vec::new(),
        before: vec![ladder.clone()],
    };
    let mut now = 0;
    for (index, op) in ops.iter().enumerate() {
        let input = input(op, &ladder, &mut now, index);
        let decision = ladder.step(&input);
        trace.inputs.push(input);
        trace.decisions.push(decision);
        trace.before.push(ladder.clone());
    }
    trace
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(CASES),
        max_shrink_iters: 4096,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/test_model_ladder.txt",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The properties, each a check of a trace

/// No data never escalates: while some signal's last sample (as the inputs gave it) has no
/// data, nothing is taken, the state is `paused_no_data` (or `exhausted`) and that signal's
/// value is null; an input that brings no data takes nothing; and the samples a Take gives as
/// its cause are real data — for a run a signal's turning bad started, exactly `bad_samples`
/// values above the threshold.
fn check_no_data_never_escalates(trace: &Trace) -> Result<(), TestCaseError> {
    let signals = trace.config.signals.len();
    let mut no_data = vec![false; signals];
    for (index, (input, decision)) in trace.inputs.iter().zip(&trace.decisions).enumerate() {
        let mut brings_no_data = false;
        if let Input::Samples { values, .. } = input {
            for (name, sample) in values {
                let at = NAMES.iter().position(|n| n == name).unwrap();
                no_data[at] = sample.value().is_none();
                brings_no_data |= sample.value().is_none();
            }
        }
        let after = trace.after(index);
        let status = after.status();
        if brings_no_data {
            prop_assert_eq!(decision.takes().count(), 0, "input {}: {:?}", index, input);
        }
        if no_data.iter().any(|&n| n) {
            prop_assert_eq!(decision.takes().count(), 0, "input {}", index);
            prop_assert!(
                matches!(
                    status.state,
                    LadderState::PausedNoData | LadderState::Exhausted
                ),
                "input {}: {:?}",
                index,
                status
            );
            for (_, name) in no_data.iter().zip(NAMES).filter(|(&n, _)| n) {
                prop_assert_eq!(status.signals[name], None);
            }
        }
        let before = &trace.before[index];
        for take in decision.takes() {
            for values in take.why.signals.values() {
                prop_assert!(values.iter().all(|v| v.is_finite()));
            }
            let started = matches!(before.state(), LadderState::Watching | LadderState::Cleared);
            if started {
                prop_assert_eq!(take.rung, 0);
                prop_assert!(!take.why.signals.is_empty());
                for values in take.why.signals.values() {
                    prop_assert_eq!(values.len(), trace.config.bad_samples as usize);
                    prop_assert!(values.iter().all(|&v| v > ABOVE), "{:?}", take.why);
                }
            }
        }
    }
    Ok(())
}

/// The Takes of a trace with the index of the input that made each.
fn takes(trace: &Trace) -> Vec<(usize, Take)> {
    trace
        .decisions
        .iter()
        .enumerate()
        .flat_map(|(i, d)| d.takes().cloned().map(move |t| (i, t)))
        .collect()
}

/// No rung is passed over unless its request was refused: within a run the rungs are taken
/// 0, 1, 2, ... in order, each only after the one before was refused or completed and then
/// had a whole verify window (`verify_seconds` since its completion) without clearing; a new
/// run starts at rung 0, only after the last rung did so or a rung cleared the signals; no Take
/// comes while another's request has not ended, nor after a failure.
fn check_no_rung_passed_over(trace: &Trace) -> Result<(), TestCaseError> {
    let verify = trace.config.verify_seconds * 1000;
    let last = trace.config.rungs.len() - 1;
    // The previous Take, how its request ended and when, and whether a rung cleared since.
    let mut previous: Option<(Take, Option<(RungOutcome, Millis)>)> = None;
    let mut cleared_since = false;
    for (index, (input, decision)) in trace.inputs.iter().zip(&trace.decisions).enumerate() {
        let before = &trace.before[index];
        if let (
            Input::RungDone {
                msg_id, outcome, ..
            },
            Some((take, ended @ None)),
        ) = (input, &mut previous)
        {
            if before.outstanding().map(|t| t.msg_id) == Some(*msg_id) {
                prop_assert_eq!(*msg_id, take.msg_id);
                *ended = Some((*outcome, before.now().max(input.at())));
            }
        }
        for take in decision.takes() {
            let now = trace.after(index).now();
            match &previous {
                None => {
                    prop_assert_eq!((take.run, take.rung), (1, 0));
                }
                Some((prev, ended)) => {
                    let Some((outcome, at)) = ended else {
                        return Err(TestCaseError::fail(format!(
                            "input {index}: {take:?} while {prev:?} had not ended"
                        )));
                    };
                    let window_over = *outcome == RungOutcome::Completed && now - at >= verify;
                    let moved_on = *outcome == RungOutcome::Refused || window_over;
                    prop_assert_ne!(*outcome, RungOutcome::Failed, "a Take after a failure");
                    if take.run == prev.run {
                        prop_assert_eq!(take.rung, prev.rung + 1, "input {}", index);
                        prop_assert!(moved_on, "input {}: {:?} after {:?}", index, take, ended);
                    } else {
                        prop_assert_eq!(take.run, prev.run + 1, "input {}", index);
                        prop_assert_eq!(take.rung, 0);
                        prop_assert!(
                            cleared_since || (prev.rung == last && moved_on),
                            "input {}: a new run after rung {} of {}",
                            index,
                            prev.rung,
                            last
                        );
                    }
                }
            }
            previous = Some((take.clone(), None));
            cleared_since = false;
        }
        cleared_since |= trace.after(index).state() == LadderState::Cleared;
    }
    Ok(())
}

/// Never more than `max_runs` runs: `runs` never passes it nor goes down, every Take's run is
/// from 1 to `max_runs`, and there are at most `max_runs` × rungs Takes.
fn check_max_runs(trace: &Trace) -> Result<(), TestCaseError> {
    let max = trace.config.max_runs;
    for pair in trace.before.windows(2) {
        prop_assert!(pair[1].runs() <= max);
        prop_assert!(pair[1].runs() >= pair[0].runs());
        prop_assert_eq!(pair[1].status().runs, pair[1].runs());
    }
    let takes = takes(trace);
    for (_, take) in &takes {
        prop_assert!((1..=max).contains(&take.run), "{:?}", take);
    }
    prop_assert!(takes.len() <= max as usize * trace.config.rungs.len());
    Ok(())
}

/// A destructive rung never runs unapproved: a Take of a rung that needs approval follows an
/// approval of that rung, accepted since the Take before, by the person its `why` names; a
/// Take of any other rung names nobody. An approval is accepted only while that rung awaits
/// one; otherwise it is refused with 22.
fn check_approval(trace: &Trace) -> Result<(), TestCaseError> {
    let mut approved: Option<(usize, String)> = None;
    for (index, (input, decision)) in trace.inputs.iter().zip(&trace.decisions).enumerate() {
        if let Input::Approve { rung, by, .. } = input {
            let awaiting = trace.before[index].awaiting_approval();
            match &decision.answer {
                Some(Ok(ok)) => {
                    prop_assert_eq!(*ok, *rung);
                    prop_assert_eq!(awaiting, Some(*rung));
                    approved = Some((*rung, by.clone()));
                }
                Some(Err(refusal)) => {
                    prop_assert_eq!(refusal.code(), 22);
                    prop_assert_ne!(awaiting, Some(*rung));
                }
                None => return Err(TestCaseError::fail("an approval without an answer")),
            }
        } else {
            prop_assert!(decision.answer.is_none());
        }
        for take in decision.takes() {
            if trace.config.rungs[take.rung].approval {
                let Some((rung, by)) = approved.take() else {
                    return Err(TestCaseError::fail(format!(
                        "input {index}: {take:?} without approval"
                    )));
                };
                prop_assert_eq!(rung, take.rung);
                prop_assert_eq!(take.why.approved_by.as_deref(), Some(by.as_str()));
            } else {
                prop_assert_eq!(&take.why.approved_by, &None);
                prop_assert!(approved.is_none(), "an approval left over");
            }
        }
    }
    Ok(())
}

/// The continuation of the ladder always ending: every Take completed, every approval given,
/// samples of every signal at `value` every interval.
fn finale(ladder: &mut Ladder, value: f64, steps: u64) -> Vec<LadderDecision> {
    let interval = ladder.config().interval_seconds * 1000;
    let names: Vec<String> = ladder
        .config()
        .signals
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let mut now = ladder.now();
    let mut decisions = Vec::new();
    for _ in 0..steps {
        let input = if let Some(take) = ladder.outstanding() {
            Input::RungDone {
                at: now,
                msg_id: take.msg_id,
                outcome: RungOutcome::Completed,
            }
        } else if let Some(rung) = ladder.awaiting_approval() {
            Input::Approve {
                at: now,
                rung,
                by: "finale".to_owned(),
            }
        } else {
            now += interval;
            Input::Samples {
                at: now,
                values: names
                    .iter()
                    .map(|n| (n.clone(), Sample::Value(value)))
                    .collect(),
            }
        };
        decisions.push(ladder.step(&input));
    }
    decisions
}

/// The inputs within which a cooperating world brings the ladder to its end.
fn bound(config: &LadderConfig) -> u64 {
    // A window may end once without a sample of some signal and start afresh: one more.
    let per_rung = config.verify_seconds / config.interval_seconds + 4;
    (u64::from(config.max_runs) * config.rungs.len() as u64 + 1) * per_rung
        + u64::from(config.bad_samples)
        + 4
}

/// The ladder always ends; see the module documentation for what that means.
fn check_always_ends(trace: &Trace, stays_bad: bool) -> Result<(), TestCaseError> {
    let config = &trace.config;
    let mut ladder = trace.before.last().unwrap().clone();
    let bound = bound(config);
    let value = if stays_bad { ABOVE * 2.0 } else { ABOVE / 2.0 };
    let takes_before = takes(trace).len();
    let decisions = finale(&mut ladder, value, bound);
    let taken = takes_before + decisions.iter().map(|d| d.takes().count()).sum::<usize>();
    prop_assert!(taken <= config.max_runs as usize * config.rungs.len());
    if stays_bad {
        prop_assert_eq!(
            ladder.state(),
            LadderState::Exhausted,
            "not exhausted within {} inputs of bad samples",
            bound
        );
    } else {
        let rest = ladder.state();
        prop_assert!(
            matches!(
                rest,
                LadderState::Watching | LadderState::Cleared | LadderState::Exhausted
            ),
            "{:?} after {} inputs of good samples",
            rest,
            bound
        );
        let more = finale(&mut ladder, value, bound);
        prop_assert_eq!(more.iter().map(|d| d.takes().count()).sum::<usize>(), 0);
        prop_assert_eq!(ladder.state(), rest);
    }
    if ladder.state() == LadderState::Exhausted {
        // Absorbing: the trace's own inputs again, shifted past now, change nothing.
        let shift = ladder.now() + 1;
        for input in &trace.inputs {
            let input = shifted(input, shift, &ladder);
            let decision = ladder.step(&input);
            prop_assert_eq!(decision.takes().count(), 0);
            prop_assert_eq!(decision.notes().count(), 0);
            prop_assert_eq!(ladder.state(), LadderState::Exhausted);
        }
    }
    Ok(())
}

/// `input` `by` milliseconds later, completing what `ladder` has outstanding, if anything.
fn shifted(input: &Input, by: Millis, ladder: &Ladder) -> Input {
    let mut input = input.clone();
    match &mut input {
        Input::Samples { at, .. } | Input::Tick { at } | Input::Approve { at, .. } => *at += by,
        Input::RungDone { at, msg_id, .. } => {
            *at += by;
            if let Some(take) = ladder.outstanding() {
                *msg_id = take.msg_id;
            }
        }
    }
    input
}

/// A crash between any two inputs resumes without taking a rung twice: the ladder at the cut,
/// restored from its JSON snapshot or rebuilt by replaying the inputs before the cut, equals
/// the one that ran on, and decides every later input exactly as it did; so the Takes before
/// the cut and after it are the trace's Takes, each once (msg_ids strictly increasing, no
/// (run, rung) twice). The Take it may still be acting on is one sent before the cut, with the
/// same msg_id: sending it again is a retry, not a new rung.
fn check_crash(trace: &Trace, cut: usize) -> Result<(), TestCaseError> {
    let at_cut = &trace.before[cut];
    let snapshot = serde_json::to_string(at_cut).unwrap();
    let restored: Ladder = serde_json::from_str(&snapshot).unwrap();
    prop_assert_eq!(&restored, at_cut, "the snapshot round-trips");
    let journal = serde_json::to_string(&trace.inputs[..cut]).unwrap();
    let inputs: Vec<Input> = serde_json::from_str(&journal).unwrap();
    let replayed = Ladder::replay(&trace.config, &inputs).unwrap();
    prop_assert_eq!(&replayed, at_cut, "replay rebuilds it");
    let before_cut: Vec<Take> = trace.decisions[..cut]
        .iter()
        .flat_map(|d| d.takes().cloned())
        .collect();
    if let Some(outstanding) = restored.outstanding() {
        prop_assert_eq!(Some(outstanding), before_cut.last());
    }
    for mut ladder in [restored, replayed] {
        let mut all = before_cut.clone();
        for (index, input) in trace.inputs.iter().enumerate().skip(cut) {
            let decision = ladder.step(input);
            prop_assert_eq!(&decision, &trace.decisions[index], "input {}", index);
            all.extend(decision.takes().cloned());
        }
        prop_assert_eq!(&ladder, trace.before.last().unwrap());
        let expected: Vec<Take> = takes(trace).into_iter().map(|(_, t)| t).collect();
        prop_assert_eq!(&all, &expected);
        for pair in all.windows(2) {
            prop_assert!(pair[0].msg_id < pair[1].msg_id);
            prop_assert_ne!((pair[0].run, pair[0].rung), (pair[1].run, pair[1].rung));
        }
        let mut seen: Vec<(u32, usize)> = all.iter().map(|t| (t.run, t.rung)).collect();
        seen.sort_unstable();
        seen.dedup();
        prop_assert_eq!(seen.len(), all.len(), "no rung taken twice");
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn no_data_never_escalates((setup, ops) in case()) {
        check_no_data_never_escalates(&drive(&setup, &ops))?;
    }

    #[test]
    fn no_rung_is_passed_over_unless_its_request_was_refused((setup, ops) in case()) {
        check_no_rung_passed_over(&drive(&setup, &ops))?;
    }

    #[test]
    fn never_more_than_max_runs_runs((setup, ops) in case()) {
        check_max_runs(&drive(&setup, &ops))?;
    }

    #[test]
    fn a_destructive_rung_never_runs_unapproved((setup, ops) in case()) {
        check_approval(&drive(&setup, &ops))?;
    }

    #[test]
    fn the_ladder_always_ends((setup, ops) in case(), stays_bad in any::<bool>()) {
        check_always_ends(&drive(&setup, &ops), stays_bad)?;
    }

    #[test]
    fn a_crash_between_any_two_inputs_resumes_without_taking_a_rung_twice(
        (setup, ops) in case(),
        cut in any::<prop::sample::Index>(),
    ) {
        let trace = drive(&setup, &ops);
        check_crash(&trace, cut.index(trace.inputs.len() + 1))?;
    }
}

// ---------------------------------------------------------------------------------------------
// Coverage: the generated traces reach what the properties are about

#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    traces: u64,
    states: [u64; 7],
    takes: u64,
    approved_takes: u64,
    skipped: u64,
    second_runs: u64,
    not_cleared: u64,
    resumed: u64,
    failed: u64,
}

fn state_index(state: LadderState) -> usize {
    match state {
        LadderState::Watching => 0,
        LadderState::Acting => 1,
        LadderState::Verifying => 2,
        LadderState::AwaitingApproval => 3,
        LadderState::PausedNoData => 4,
        LadderState::Cleared => 5,
        LadderState::Exhausted => 6,
    }
}

fn record_coverage(coverage: &mut Coverage, trace: &Trace) {
    let mut reached = [false; 7];
    for ladder in &trace.before {
        reached[state_index(ladder.state())] = true;
    }
    coverage.traces += 1;
    for (count, reached) in coverage.states.iter_mut().zip(reached) {
        *count += u64::from(reached);
    }
    for decision in &trace.decisions {
        for take in decision.takes() {
            coverage.takes += 1;
            coverage.approved_takes += u64::from(take.why.approved_by.is_some());
            coverage.second_runs += u64::from(take.run > 1 && take.rung == 0);
        }
        for note in decision.notes() {
            match &note.event {
                Event::Skipped => coverage.skipped += 1,
                Event::NotCleared => coverage.not_cleared += 1,
                Event::Resumed => coverage.resumed += 1,
                Event::Exhausted { reason } if reason.contains("failed") => coverage.failed += 1,
                _ => {}
            }
        }
    }
}

/// The generated traces reach every state and every way of moving on: a model whose cases
/// never await approval proves nothing about approval.
#[test]
fn the_generated_traces_reach_every_state_and_transition() {
    let config = config();
    let mut runner = TestRunner::new(config.clone());
    let coverage = Mutex::new(Coverage::default());
    runner
        .run(&case(), |(setup, ops)| {
            let trace = drive(&setup, &ops);
            record_coverage(&mut coverage.lock().expect("the coverage lock"), &trace);
            Ok(())
        })
        .unwrap();
    let coverage = coverage.into_inner().expect("the coverage lock");
    eprintln!("ladder model coverage: {coverage:?}");
    if config.cases >= CASES {
        for (state, count) in [
            "watching",
            "acting",
            "verifying",
            "awaiting_approval",
            "paused_no_data",
            "cleared",
            "exhausted",
        ]
        .iter()
        .zip(coverage.states)
        {
            assert!(
                count >= 10,
                "{state} reached in {count} traces: {coverage:?}"
            );
        }
        for (what, count) in [
            ("takes", coverage.takes),
            ("approved takes", coverage.approved_takes),
            ("skipped rungs", coverage.skipped),
            ("second runs", coverage.second_runs),
            ("windows not cleared", coverage.not_cleared),
            ("resumes", coverage.resumed),
            ("failures", coverage.failed),
        ] {
            assert!(count >= 10, "{what}: {count}: {coverage:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A/A: noise below the threshold never escalates

/// SplitMix64: a small deterministic generator, so the A/A runs are the same every time.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1].
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / ((1u64 << 53) - 1) as f64
    }
}

/// The example estate's ladder at the default settings: `error_rate` above 0.05 and
/// `p99_latency` above 2 s, the four rungs.
fn default_ladder() -> LadderConfig {
    LadderConfig::new(
        "http://127.0.0.1:9090",
        vec![
            Signal {
                name: "error_rate".to_owned(),
                query: "errors".to_owned(),
                above: 0.05,
            },
            Signal {
                name: "p99_latency".to_owned(),
                query: "latency".to_owned(),
                above: 2.0,
            },
        ],
        vec![
            Rung::new(json!({"type": "disable_feature", "feature": "new_checkout"})),
            Rung::new(json!({"type": "switch_traffic", "from": "green", "to": "blue"})),
            Rung::new(json!({"type": "rollback", "version": 3})),
            Rung::new(json!({"type": "restore", "backup": "users_backup_20240115"})),
        ],
    )
}

/// One hour of samples every `interval_seconds`, each signal at `noise` (a fraction of its
/// threshold: at most 1 is at or below it), with a tick between samples; returns how many
/// rungs were taken.
fn hour(
    config: &LadderConfig,
    random: &mut SplitMix,
    noise: impl Fn(&mut SplitMix, u64) -> f64,
) -> usize {
    let mut ladder = Ladder::new(config).unwrap();
    let interval = config.interval_seconds * 1000;
    let mut taken = 0;
    for step in 0..(3600 / config.interval_seconds) {
        let at = step * interval;
        let values = config
            .signals
            .iter()
            .map(|s| (s.name.clone(), Sample::Value(s.above * noise(random, step))))
            .collect();
        taken += ladder.step(&Input::Samples { at, values }).takes().count();
        taken += ladder
            .step(&Input::Tick {
                at: at + interval / 2,
            })
            .takes()
            .count();
        // The machine answers every Take at once.
        if let Some(take) = ladder.outstanding().cloned() {
            ladder.step(&Input::RungDone {
                at: at + interval / 2,
                msg_id: take.msg_id,
                outcome: RungOutcome::Completed,
            });
        }
    }
    taken
}

#[test]
fn a_a_noise_below_the_threshold_takes_no_rung_in_1000_runs() {
    let config = default_ladder();
    assert_eq!(
        (
            config.interval_seconds,
            config.bad_samples,
            config.verify_seconds,
            config.max_runs
        ),
        (5, 2, 60, 1)
    );
    let mut random = SplitMix(0x1ADDE5);
    let mut escalations = 0;
    for run in 0..1000 {
        // Uniform noise up to the threshold, a sample exactly at it now and then.
        let taken = hour(&config, &mut random, |r, _| {
            if r.next() % 50 == 0 {
                1.0
            } else {
                r.unit()
            }
        });
        if taken > 0 {
            eprintln!("run {run}: {taken} rungs taken on noise");
        }
        escalations += taken;
    }
    assert_eq!(escalations, 0);
}

#[test]
fn a_a_harness_sees_a_real_fault() {
    // The same harness and noise, with the error rate at twice its threshold for a minute in
    // the middle of the hour: the ladder takes the kill switch, which clears it.
    let config = default_ladder();
    let mut random = SplitMix(0x1ADDE5);
    for _ in 0..10 {
        let taken = hour(&config, &mut random, |r, step| {
            if (360..372).contains(&step) {
                2.0
            } else {
                r.unit()
            }
        });
        assert_eq!(taken, 1);
    }
    // And lone spikes above it (fewer than bad_samples in a row) take nothing.
    let taken = hour(&config, &mut random, |r, step| {
        if step % 7 == 0 {
            1.5
        } else {
            r.unit()
        }
    });
    assert_eq!(taken, 0);
}
