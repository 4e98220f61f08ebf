//! Code generation for `#[protocol]`: the impl block as written (minus the inert markers), the
//! `Request` and `Reply` enums, and the dispatcher.

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

fn generate(protocol: &Protocol) -> TokenStream {
    let item = strip_markers(protocol.original);
    let names: Vec<Names> = protocol.transitions.iter().map(Names::new).collect();
    let refusal = protocol.transitions[0].result.expect("validated").1;
    let serde_path = quote!(::rollback_node::__private::serde);
    let serde_crate = "::rollback_node::__private::serde";

    let request_variants = names.iter().map(|n| {
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
    let messages: Vec<&String> = names.iter().map(|n| &n.message).collect();
    let variants: Vec<&Ident> = names.iter().map(|n| &n.variant).collect();
    let replies: Vec<&Ident> = names.iter().map(|n| n.reply).collect();
    let changes: Vec<bool> = names.iter().map(|n| n.transition.changes_state()).collect();
    let field_names: Vec<Vec<String>> = names
        .iter()
        .map(|n| {
            n.fields
                .iter()
                .map(|f| f.to_string().trim_start_matches("r#").to_owned())
                .collect()
        })
        .collect();
    // `lane = Lane::Schema` on some transitions: `Request::lane` returns `Option<Lane>`.
    let lane_fn = protocol
        .transitions
        .iter()
        .find_map(|t| t.attr.lane.as_ref())
        .map(|first| {
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
            quote! {
                /// The lane a state-changing request is decided and performed in; `None` for a
                /// query.
                pub fn lane(&self) -> ::core::option::Option<#leading #(#lane_ty)::*> {
                    match self { #(#arms)* }
                }
            }
        });
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
    let reply_docs = names
        .iter()
        .map(|n| format!("The reply to a `{}` request.", n.message));

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
                #[serde(crate = #serde_crate)]
                struct Fields { #( #fields: #types, )* }
                ::core::option::Option::Some(
                    <Fields as #serde_path::Deserialize>::deserialize(deserializer)
                        .map(|f| Self::#variant { #( #fields: f.#fields, )* }),
                )
            }
        }
    });

    let decision = quote!(::rollback_node::core::Decision);
    let dispatch = names.iter().map(|n| {
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
        #item

        /// A decoded request body: one variant per `#[transition]`, its fields the transition's
        /// arguments. On the wire it is a JSON object whose `type` names the variant.
        #[derive(Debug, Clone, PartialEq, #serde_path::Serialize, #serde_path::Deserialize)]
        #[serde(crate = #serde_crate, tag = "type")]
        pub enum Request {
            #(#request_variants)*
        }

        impl Request {
            /// Every message type, in the order the transitions are declared.
            pub const TYPES: &'static [&'static str] = &[ #(#messages),* ];

            /// The wire `type` of this request.
            pub fn type_name(&self) -> &'static str {
                match self { #( Self::#variants { .. } => #messages, )* }
            }

            /// Whether this request may change the state (its transition names a lane).
            /// Such requests are remembered for retries; queries are not.
            pub fn changes_state(&self) -> bool {
                match self { #( Self::#variants { .. } => #changes, )* }
            }

            #lane_fn

            /// The fields a request of type `type_name` carries besides `type` and `msg_id`, in
            /// declaration order; `None` when `type_name` is not one of [`Request::TYPES`].
            pub fn fields(type_name: &str) -> ::core::option::Option<&'static [&'static str]> {
                match type_name {
                    #( #messages => ::core::option::Option::Some(&[ #(#field_names),* ]), )*
                    _ => ::core::option::Option::None,
                }
            }

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

        /// A successful reply: one variant per `#[transition]`, holding its reply body.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Reply {
            #( #[doc = #reply_docs] #replies(#replies), )*
        }

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

        impl #impl_generics #self_ty #where_clause {
            /// Decides one request through its transition: a reply at once, an accepted
            /// operation, or a lookup, with the reply wrapped in [`Reply`]. Changes nothing.
            ///
            /// # Errors
            /// The transition's refusal.
            pub fn decide(&self, request: &Request) -> ::core::result::Result<#decision<Reply>, #refusal> {
                match request {
                    #(#dispatch)*
                }
            }
        }
    }
}
