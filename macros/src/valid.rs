//! Cross-checks of the parsed protocol. Every error is spanned at the token to change; all of
//! them are reported at once, and a duplicate also points at the first occurrence.

use crate::ast::{Protocol, Transition};
use quote::ToTokens;
use std::collections::HashMap;
use syn::spanned::Spanned;
use syn::{Error, ReturnType, Type};

/// Field names the envelope or the reply already uses.
const RESERVED_FIELDS: &[&str] = &["type", "msg_id", "in_reply_to"];

/// The error type every transition must return.
const REFUSAL: &str = "Refusal";

impl Protocol<'_> {
    /// Checks the whole protocol; returns every problem found, combined.
    pub fn validate(&self) -> syn::Result<()> {
        let mut errors = Errors::default();
        if self.transitions.is_empty() {
            errors.push(Error::new(
                self.original.self_ty.span(),
                "#[protocol] found no #[transition] method in this impl; mark at least one",
            ));
        }
        for transition in &self.transitions {
            transition.validate(&mut errors);
        }
        self.check_unique(&mut errors);
        errors.finish()
    }

    fn check_unique(&self, errors: &mut Errors) {
        let mut messages: HashMap<String, &Transition> = HashMap::new();
        let mut replies: HashMap<String, &Transition> = HashMap::new();
        for transition in &self.transitions {
            let name = transition.message_name();
            if let Some(first) = messages.get(&name) {
                let mut error = Error::new(
                    transition.message_span(),
                    format!("duplicate message `{name}`: each message type has one transition"),
                );
                error.combine(Error::new(first.message_span(), "first one here"));
                errors.push(error);
            } else {
                messages.insert(name, transition);
            }
            if let Some(reply) = transition.reply_ident() {
                if let Some(first) = replies.get(&reply.to_string()) {
                    let mut error = Error::new(
                        reply.span(),
                        format!(
                            "`{reply}` is already the reply of `{}`; each message has a reply type of its own",
                            first.message_name()
                        ),
                    );
                    if let Some(first_reply) = first.reply_ident() {
                        error.combine(Error::new(first_reply.span(), "first one here"));
                    }
                    errors.push(error);
                } else {
                    replies.insert(reply.to_string(), transition);
                }
            }
        }
    }
}

impl Transition<'_> {
    fn validate(&self, errors: &mut Errors) {
        let sig = &self.original.sig;
        if let Some(extra) = self.extra_attr {
            let mut error = Error::new(
                extra.span(),
                "duplicate #[transition]: one marker per method",
            );
            error.combine(Error::new(self.attr.original.span(), "first one here"));
            errors.push(error);
        }
        if let Some(token) = sig
            .asyncness
            .map(|t| t.span)
            .or(sig.constness.map(|t| t.span))
            .or(sig.unsafety.map(|t| t.span))
        {
            errors.push(Error::new(
                token,
                "a transition is a plain synchronous method: no `async`, `const` or `unsafe`",
            ));
        }
        if let Some(param) = sig.generics.params.first() {
            errors.push(Error::new(
                param.span(),
                "a transition cannot be generic: its arguments become the fields of a request type",
            ));
        }
        match self.receiver {
            None => errors.push(Error::new(
                sig.ident.span(),
                "a transition is a method that decides: take `&self`",
            )),
            Some(r) if r.reference.is_none() || r.colon_token.is_some() => errors.push(Error::new(
                r.span(),
                "a transition takes `&self`, not `self` by value",
            )),
            Some(r) if r.mutability.is_some() => errors.push(Error::new(
                r.span(),
                "a transition only decides, so it takes `&self`: a change returns `Decision<Reply>` and is applied when its effects complete",
            )),
            Some(_) => {}
        }
        if let (Some(lane), None) = (&self.attr.lane, self.decision) {
            if let Some((ok, _)) = self.result {
                let mut error = Error::new(
                    ok.span(),
                    "a transition with a lane changes the state: return `Result<Decision<ReplyType>, Refusal>`",
                );
                error.combine(Error::new(lane.span(), "the lane is given here"));
                errors.push(error);
            }
        }
        for arg in &self.args {
            match arg.ident {
                None => errors.push(Error::new(
                    arg.original.span(),
                    "a transition's arguments become request fields: write each as `name: Type`",
                )),
                Some(ident) => {
                    let name = ident.to_string();
                    let name = name.trim_start_matches("r#");
                    if RESERVED_FIELDS.contains(&name) {
                        errors.push(Error::new(
                            ident.span(),
                            format!(
                                "`{name}` is a field of the envelope; name this argument otherwise"
                            ),
                        ));
                    }
                }
            }
        }
        self.validate_return(errors);
    }

    fn validate_return(&self, errors: &mut Errors) {
        let sig = &self.original.sig;
        let Some((ok, err)) = self.result else {
            let span = match &sig.output {
                ReturnType::Default => sig.ident.span(),
                ReturnType::Type(_, ty) => ty.span(),
            };
            errors.push(Error::new(
                span,
                format!("a transition returns `Result<ReplyType, {REFUSAL}>` or `Result<Decision<ReplyType>, {REFUSAL}>`"),
            ));
            return;
        };
        let ok = self.reply_type().unwrap_or(ok);
        if matches!(ok, Type::Tuple(t) if t.elems.is_empty()) {
            errors.push(Error::new(
                ok.span(),
                "missing reply type: every message is answered, so return `Result<ReplyType, Refusal>` with a #[derive(Reply)] struct",
            ));
        } else if self.reply_ident().is_none() {
            errors.push(Error::new(
                ok.span(),
                format!(
                    "the reply type must be a plain struct name such as `RollbackComplete`, not `{}`",
                    ok.to_token_stream()
                ),
            ));
        }
        let err_is_refusal = match err {
            Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == REFUSAL),
            _ => false,
        };
        if !err_is_refusal {
            errors.push(Error::new(
                err.span(),
                format!(
                    "a transition's error type is `{REFUSAL}`, not `{}`: each refusal maps to a protocol error code",
                    err.to_token_stream()
                ),
            ));
        }
    }
}

/// Errors collected across the whole protocol.
#[derive(Default)]
struct Errors(Option<Error>);

impl Errors {
    fn push(&mut self, error: Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}
