//! Code generation for `#[protocol]`: the impl block as written (minus the inert markers), the
//! `Request` enum and its methods, the `Reply` enum and its `ReplyBody` impl, and the dispatcher
//! `decide`, each from a function of its own.

use crate::ast::{Protocol, Transition};
use crate::attr;
use heck::ToUpperCamelCase;
use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ImplItem, ItemImpl};

/// Expands `#[protocol]`, or returns every error found.
pub fn protocol(args: TokenStream, item: &ItemImpl) -> syn::Result<TokenStream> {
    attr::protocol_args(args)?;
    let protocol = Protocol::from_syn(item)?;
    protocol.validate()?;
    Ok(generate(&protocol))
}

/// The impl block with every `#[transition]` marker removed; the methods stay as written.
pub fn strip_markers(item: &ItemImpl) -> ItemImpl {
    let mut item = item.clone();
    for impl_item in &mut item.items {
        if let ImplItem::Fn(func) = impl_item {
            func.attrs.retain(|a| !attr::is_transition(a));
        }
    }
    item
}

/// Names used by the generated code for one transition.
struct Names<'a> {
    transition: &'a Transition<'a>,
    message: String,
    variant: Ident,
    reply: &'a Ident,
    reply_ty: &'a syn::Type,
    method: &'a Ident,
    fields: Vec<&'a Ident>,
    types: Vec<&'a syn::Type>,
}

impl<'a> Names<'a> {
    fn new(transition: &'a Transition<'a>) -> Self {
        let message = transition.message_name();
        let variant = format_ident!(
            "{}",
            message.to_upper_camel_case(),
            span = transition.message_span()
        );
        Names {
            transition,
            variant,
            message,
            // valid.rs has checked that these exist.
            reply: transition.reply_ident().expect("validated reply type"),
            reply_ty: transition.reply_type().expect("validated"),
            method: &transition.original.sig.ident,
            fields: transition
                .args
                .iter()
                .map(|a| a.ident.expect("validated argument"))
                .collect(),
            types: transition.args.iter().map(|a| a.ty).collect(),
        }
    }
}

/// The path under which the generated code reaches serde, as tokens and as the string
/// `#[serde(crate = "...")]` takes.
fn serde_path() -> TokenStream {
    quote!(::rollback_node::__private::serde)
}

/// See [`serde_path`].
const SERDE_CRATE: &str = "::rollback_node::__private::serde";

/// The whole expansion: the impl block as written, then each generated item.
fn generate(protocol: &Protocol) -> TokenStream {
    let item = strip_markers(protocol.original);
    let names: Vec<Names> = protocol.transitions.iter().map(Names::new).collect();
    let request_enum = request_enum(&names);
    let request_impl = request_impl(protocol, &names);
    let reply_enum = reply_enum(&names);
    let reply_body_impl = reply_body_impl(&names);
    let dispatcher = dispatcher(protocol, &item, &names);
    quote! {
        #item
        #request_enum
        #request_impl
        #reply_enum
        #reply_body_impl
        #dispatcher
    }
}

/// `enum Request`: one variant per transition, its fields the transition's arguments, carrying
/// the transition's doc comment; serde-tagged by `type`.
fn request_enum(names: &[Names]) -> TokenStream {
    let serde_path = serde_path();
    let variants = names.iter().map(|n| {
        let Names {
            message,
            variant,
            fields,
            types,
            ..
        } = n;
        let docs = n
            .transition
            .original
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"));
        let field_docs = fields
            .iter()
            .map(|f| format!("The `{f}` field of a `{message}` request."));
        quote! {
            #(#docs)*
            #[serde(rename = #message)]
            #variant { #( #[doc = #field_docs] #fields: #types, )* },
        }
    });
    quote! {
        /// A decoded request body: one variant per `#[transition]`, its fields the transition's
        /// arguments. On the wire it is a JSON object whose `type` names the variant.
        #[derive(Debug, Clone, PartialEq, #serde_path::Serialize, #serde_path::Deserialize)]
        #[serde(crate = #SERDE_CRATE, tag = "type")]
        pub enum Request {
            #(#variants)*
        }
    }
}

/// `impl Request`: `TYPES`, `type_name`, `changes_state`, `lane` and `lane_of` (when some
/// transition names a lane), `fields` and `decode_fields`.
fn request_impl(protocol: &Protocol, names: &[Names]) -> TokenStream {
    let types = request_types(names);
    let type_name = request_type_name(names);
    let changes_state = request_changes_state(names);
    let lane = request_lane(protocol, names);
    let fields = request_fields(names);
    let decode_fields = request_decode_fields(names);
    quote! {
        impl Request {
            #types

            #type_name

            #changes_state

            #lane

            #fields

            #decode_fields
        }
    }
}

/// The wire names of the messages, in declaration order.
fn messages<'a>(names: &'a [Names]) -> Vec<&'a String> {
    names.iter().map(|n| &n.message).collect()
}

/// The `Request` variants, in declaration order.
fn variants<'a>(names: &'a [Names]) -> Vec<&'a Ident> {
    names.iter().map(|n| &n.variant).collect()
}

/// `Request::TYPES`.
fn request_types(names: &[Names]) -> TokenStream {
    let messages = messages(names);
    quote! {
        /// Every message type, in the order the transitions are declared.
        pub const TYPES: &'static [&'static str] = &[ #(#messages),* ];
    }
}

/// `Request::type_name`.
fn request_type_name(names: &[Names]) -> TokenStream {
    let messages = messages(names);
    let variants = variants(names);
    quote! {
        /// The wire `type` of this request.
        pub fn type_name(&self) -> &'static str {
            match self { #( Self::#variants { .. } => #messages, )* }
        }
    }
}

/// `Request::changes_state`.
fn request_changes_state(names: &[Names]) -> TokenStream {
    let variants = variants(names);
    let changes: Vec<bool> = names.iter().map(|n| n.transition.changes_state()).collect();
    quote! {
        /// Whether this request may change the state (its transition names a lane).
        /// Such requests are remembered for retries; queries are not.
        pub fn changes_state(&self) -> bool {
            match self { #( Self::#variants { .. } => #changes, )* }
        }
    }
}

/// `Request::lane` and `Request::lane_of`, returning `Option<Lane>` where `Lane` is the enum
/// named by the first `lane = Lane::Variant`; nothing when no transition names a lane.
fn request_lane(protocol: &Protocol, names: &[Names]) -> Option<TokenStream> {
    let first = protocol
        .transitions
        .iter()
        .find_map(|t| t.attr.lane.as_ref())?;
    let mut lane_ty = first.clone();
    lane_ty.segments.pop();
    let lane_ty = lane_ty
        .segments
        .pairs()
        .map(|p| p.into_value().clone())
        .collect::<Vec<_>>();
    let leading = first.leading_colon;
    let arms = names.iter().map(|n| {
        let variant = &n.variant;
        match &n.transition.attr.lane {
            Some(lane) => {
                quote! { Self::#variant { .. } => ::core::option::Option::Some(#lane), }
            }
            None => quote! { Self::#variant { .. } => ::core::option::Option::None, },
        }
    });
    let by_name = names.iter().filter_map(|n| {
        let message = &n.message;
        let lane = n.transition.attr.lane.as_ref()?;
        Some(quote! { #message => ::core::option::Option::Some(#lane), })
    });
    Some(quote! {
        /// The lane a state-changing request is decided and performed in; `None` for a
        /// query.
        pub fn lane(&self) -> ::core::option::Option<#leading #(#lane_ty)::*> {
            match self { #(#arms)* }
        }

        /// The lane requests of type `type_name` are decided and performed in; `None` for a
        /// query or a type that is not one of [`Request::TYPES`].
        pub fn lane_of(type_name: &str) -> ::core::option::Option<#leading #(#lane_ty)::*> {
            match type_name {
                #(#by_name)*
                _ => ::core::option::Option::None,
            }
        }
    })
}

/// `Request::fields`: each message's field names as on the wire (without a raw identifier's
/// `r#`).
fn request_fields(names: &[Names]) -> TokenStream {
    let messages = messages(names);
    let field_names: Vec<Vec<String>> = names
        .iter()
        .map(|n| {
            n.fields
                .iter()
                .map(|f| f.to_string().trim_start_matches("r#").to_owned())
                .collect()
        })
        .collect();
    quote! {
        /// The fields a request of type `type_name` carries besides `type` and `msg_id`, in
        /// declaration order; `None` when `type_name` is not one of [`Request::TYPES`].
        pub fn fields(type_name: &str) -> ::core::option::Option<&'static [&'static str]> {
            match type_name {
                #( #messages => ::core::option::Option::Some(&[ #(#field_names),* ]), )*
                _ => ::core::option::Option::None,
            }
        }
    }
}

/// `Request::decode_fields`: per message, a private `Fields` struct deserialized from the object
/// and moved into the variant.
fn request_decode_fields(names: &[Names]) -> TokenStream {
    let serde_path = serde_path();
    let decoders = names.iter().map(|n| {
        let Names {
            message,
            variant,
            fields,
            types,
            ..
        } = n;
        quote! {
            #message => {
                #[derive(#serde_path::Deserialize)]
                #[serde(crate = #SERDE_CRATE)]
                struct Fields { #( #fields: #types, )* }
                ::core::option::Option::Some(
                    <Fields as #serde_path::Deserialize>::deserialize(deserializer)
                        .map(|f| Self::#variant { #( #fields: f.#fields, )* }),
                )
            }
        }
    });
    quote! {
        /// Decodes the fields of a request whose `type` is `type_name` from a JSON object
        /// (other keys, such as `type` and `msg_id`, are ignored).
        ///
        /// Returns `None` when `type_name` is not one of [`Request::TYPES`].
        ///
        /// # Errors
        /// The deserializer's error when a field is missing or ill-typed.
        pub fn decode_fields<'de, D>(
            type_name: &str,
            deserializer: D,
        ) -> ::core::option::Option<::core::result::Result<Self, D::Error>>
        where
            D: #serde_path::Deserializer<'de>,
        {
            match type_name {
                #(#decoders)*
                _ => ::core::option::Option::None,
            }
        }
    }
}

/// `enum Reply`: one variant per transition, named after and holding its reply type.
fn reply_enum(names: &[Names]) -> TokenStream {
    let replies: Vec<&Ident> = names.iter().map(|n| n.reply).collect();
    let reply_docs = names
        .iter()
        .map(|n| format!("The reply to a `{}` request.", n.message));
    quote! {
        /// A successful reply: one variant per `#[transition]`, holding its reply body.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Reply {
            #( #[doc = #reply_docs] #replies(#replies), )*
        }
    }
}

/// `impl ReplyBody for Reply`, delegating to each variant's body.
fn reply_body_impl(names: &[Names]) -> TokenStream {
    let serde_path = serde_path();
    // Spanned at each reply type, so that a type without #[derive(Reply)] is reported where the
    // transition names it.
    let type_name_calls = names.iter().map(|n| {
        let reply = n.reply;
        quote_spanned! {n.reply_ty.span()=>
            Self::#reply(reply) => ::rollback_node::ReplyBody::type_name(reply),
        }
    });
    let serialize_calls = names.iter().map(|n| {
        let reply = n.reply;
        quote_spanned! {n.reply_ty.span()=>
            Self::#reply(reply) => ::rollback_node::ReplyBody::serialize_fields(reply, map),
        }
    });
    quote! {
        impl ::rollback_node::ReplyBody for Reply {
            fn type_name(&self) -> &'static str {
                match self { #(#type_name_calls)* }
            }

            fn serialize_fields<M>(&self, map: &mut M) -> ::core::result::Result<(), M::Error>
            where
                M: #serde_path::ser::SerializeMap,
            {
                match self { #(#serialize_calls)* }
            }
        }
    }
}

/// The dispatcher: `fn decide(&self, &Request) -> Result<Decision<Reply>, Refusal>` on the impl
/// block's type, calling each variant's transition with clones of its fields and wrapping its
/// reply in [`Reply`] (`State::decide` in rollback-node).
fn dispatcher(protocol: &Protocol, item: &ItemImpl, names: &[Names]) -> TokenStream {
    let refusal = protocol.transitions[0].result.expect("validated").1;
    let decision = quote!(::rollback_node::core::Decision);
    let arms = names.iter().map(|n| {
        let Names {
            variant,
            reply,
            method,
            fields,
            ..
        } = n;
        let wrap = if n.transition.decision.is_some() {
            quote!(|decision| decision.map(Reply::#reply))
        } else {
            quote!(|reply| #decision::Reply(Reply::#reply(reply)))
        };
        quote! {
            Request::#variant { #(#fields,)* } => self
                .#method( #( ::core::clone::Clone::clone(#fields), )* )
                .map(#wrap),
        }
    });
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    quote! {
        impl #impl_generics #self_ty #where_clause {
            /// Decides one request through its transition: a reply at once, an accepted
            /// operation, or a lookup, with the reply wrapped in [`Reply`]. Changes nothing.
            ///
            /// # Errors
            /// The transition's refusal.
            pub fn decide(&self, request: &Request) -> ::core::result::Result<#decision<Reply>, #refusal> {
                match request {
                    #(#arms)*
                }
            }
        }
    }
}
