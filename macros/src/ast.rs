//! A typed view of the `#[protocol]` impl block: which methods are transitions, their receivers,
//! arguments and return types. Every piece keeps its syn node so that later stages can point
//! errors at the token that caused them. Beyond parsing the `#[transition(...)]` markers, nothing
//! is judged here; `valid` does that.

use crate::attr::{self, TransitionAttr};
use proc_macro2::Span;
use syn::{
    FnArg, GenericArgument, ImplItem, ImplItemFn, ItemImpl, Pat, PathArguments, ReturnType, Type,
};

/// The impl block and the transitions found in it.
pub struct Protocol<'a> {
    /// The impl block as written.
    pub original: &'a ItemImpl,
    /// One entry per method marked `#[transition]`, in declaration order.
    pub transitions: Vec<Transition<'a>>,
}

/// One method marked `#[transition]`.
pub struct Transition<'a> {
    /// The method as written.
    pub original: &'a ImplItemFn,
    /// Its first `#[transition]` marker, parsed.
    pub attr: TransitionAttr<'a>,
    /// A second `#[transition]` marker, kept to be reported as a duplicate.
    pub extra_attr: Option<&'a syn::Attribute>,
    /// `&self` or `&mut self`, if the method has a receiver.
    pub receiver: Option<&'a syn::Receiver>,
    /// The other arguments: the request's fields.
    pub args: Vec<Arg<'a>>,
    /// The `T` and `E` of a `Result<T, E>` return type, when it has that shape.
    pub result: Option<(&'a Type, &'a Type)>,
    /// The `R` of an `Ok` type written `Decision<R>`; `None` when the `Ok` type is the reply
    /// itself (answered at once).
    pub decision: Option<&'a Type>,
}

/// One argument after the receiver.
pub struct Arg<'a> {
    /// The whole argument, for spans.
    pub original: &'a FnArg,
    /// The binding, when it is a plain identifier.
    pub ident: Option<&'a syn::Ident>,
    /// The declared type.
    pub ty: &'a Type,
}

impl<'a> Protocol<'a> {
    /// Reads the impl block; fails only on a malformed `#[transition(...)]` marker.
    pub fn from_syn(item: &'a ItemImpl) -> syn::Result<Self> {
        let mut transitions = Vec::new();
        for impl_item in &item.items {
            let ImplItem::Fn(func) = impl_item else {
                continue;
            };
            let mut markers = func.attrs.iter().filter(|a| attr::is_transition(a));
            let Some(first) = markers.next() else {
                continue;
            };
            transitions.push(Transition::from_syn(
                func,
                attr::transition(first)?,
                markers.next(),
            ));
        }
        Ok(Protocol {
            original: item,
            transitions,
        })
    }
}

impl<'a> Transition<'a> {
    fn from_syn(
        func: &'a ImplItemFn,
        attr: TransitionAttr<'a>,
        extra_attr: Option<&'a syn::Attribute>,
    ) -> Self {
        let mut receiver = None;
        let mut args = Vec::new();
        for input in &func.sig.inputs {
            match input {
                FnArg::Receiver(r) => receiver = Some(r),
                FnArg::Typed(typed) => args.push(Arg {
                    original: input,
                    ident: match &*typed.pat {
                        Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => Some(&p.ident),
                        _ => None,
                    },
                    ty: &typed.ty,
                }),
            }
        }
        let result = result_types(&func.sig.output);
        Transition {
            original: func,
            attr,
            extra_attr,
            receiver,
            args,
            result,
            decision: result.and_then(|(ok, _)| decision_type(ok)),
        }
    }

    /// The message's wire name: the `rename`, else the method's name.
    pub fn message_name(&self) -> String {
        match &self.attr.rename {
            Some(name) => name.value(),
            None => self.original.sig.ident.to_string(),
        }
    }

    /// Where the message's name was written.
    pub fn message_span(&self) -> Span {
        match &self.attr.rename {
            Some(name) => name.span(),
            None => self.original.sig.ident.span(),
        }
    }

    /// Whether the message changes the state: it names the lane it is decided in.
    pub fn changes_state(&self) -> bool {
        self.attr.lane.is_some()
    }

    /// The reply type: the `Ok` type, or the `R` of `Decision<R>`.
    pub fn reply_type(&self) -> Option<&'a Type> {
        let (ok, _) = self.result?;
        Some(self.decision.unwrap_or(ok))
    }

    /// The reply type's name, when it is a plain path such as `RollbackComplete`.
    pub fn reply_ident(&self) -> Option<&'a syn::Ident> {
        match self.reply_type()? {
            Type::Path(p) if p.qself.is_none() => {
                let last = p.path.segments.last()?;
                matches!(last.arguments, PathArguments::None).then_some(&last.ident)
            }
            _ => None,
        }
    }
}

/// `R` of a type written `Decision<R>` (any path ending in `Decision`).
fn decision_type(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    if last.ident != "Decision" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    });
    let reply = types.next()?;
    types.next().is_none().then_some(reply)
}

/// `T` and `E` of a return type written `Result<T, E>` (any path ending in `Result`).
fn result_types(output: &ReturnType) -> Option<(&Type, &Type)> {
    let ReturnType::Type(_, ty) = output else {
        return None;
    };
    let Type::Path(path) = &**ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    });
    let ok = types.next()?;
    let err = types.next()?;
    types.next().is_none().then_some((ok, err))
}
