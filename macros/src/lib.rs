//! Procedural macros behind `rollback-node`'s protocol.
//!
//! - `#[protocol]` goes on the `impl` block that holds the state machine's transitions. Each method
//!   marked `#[transition]` becomes one message type: its arguments are the request's fields, its
//!   `Ok` type (or the `R` of `Decision<R>`) is the reply. From them the macro derives the
//!   `Request` enum (with `TYPES`, `type_name`, `changes_state`, `lane` and `lane_of` when some
//!   transition names one, `fields` and the wire decoder `decode_fields`), the `Reply` enum and the
//!   dispatcher `decide`, a method on the impl block's type (`State::decide` in rollback-node)
//!   that calls the transition a request names.
//! - `#[derive(Reply)]` makes a struct a reply body: its snake_case name is the wire `type`, its
//!   fields follow `type` and `in_reply_to` in declaration order.
//!
//! # Layout
//! The attribute works in stages, each in its own file: [`ast`] (a typed view of the impl block
//! that keeps the syn nodes for spans), [`attr`] (the `#[transition(...)]` keywords;
//! `#[protocol]` takes none), [`valid`] (cross-checks, every error spanned at the offending
//! token), [`expand`] (code generation, one function per generated item) and [`fallback`] (what
//! is still emitted after an error, so one mistake does not cascade).
//! [`reply`] is the derive.
//!
//! These macros are re-exported by the `rollback_node` library; depend on that, not on this crate.

mod ast;
mod attr;
mod expand;
mod fallback;
mod reply;
mod valid;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput, ItemImpl};

/// Derives the protocol of a state machine from its annotated transitions.
///
/// See the `rollback_node` crate's documentation of `protocol` for the full contract and an
/// example.
#[proc_macro_attribute]
pub fn protocol(args: TokenStream, input: TokenStream) -> TokenStream {
    let item = parse_macro_input!(input as ItemImpl);
    expand::protocol(args.into(), &item)
        .unwrap_or_else(|error| fallback::protocol(&item, error))
        .into()
}

/// Makes a struct with named fields a reply body (see `rollback_node::ReplyBody`).
#[proc_macro_derive(Reply)]
pub fn derive_reply(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    reply::derive(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
