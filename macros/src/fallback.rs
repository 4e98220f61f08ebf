//! What `#[protocol]` still emits when it finds errors: the impl block as written, empty
//! `Request`/`Reply` enums, and stand-ins for `Request`'s `TYPES`, `type_name`, `changes_state`,
//! `fields` and `decode_fields` and for the dispatcher `decide`, so that code using them reports
//! only the real mistake instead of a cascade of "cannot find type `Request`". `Request::lane`
//! (whose type comes from the transitions) and `Reply`'s `ReplyBody` impl are not stood in for.

use crate::expand::strip_markers;
use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemImpl;

/// The errors as `compile_error!`s, plus the stand-ins listed in the module's documentation.
pub fn protocol(item: &ItemImpl, error: syn::Error) -> TokenStream {
    let item = strip_markers(item);
    let error = error.into_compile_error();
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    quote! {
        #error
        #item

        #[allow(missing_docs)]
        #[derive(Debug, Clone, PartialEq)]
        pub enum Request {}

        #[allow(missing_docs)]
        impl Request {
            pub const TYPES: &'static [&'static str] = &[];
            pub fn type_name(&self) -> &'static str { match *self {} }
            pub fn changes_state(&self) -> bool { match *self {} }
            pub fn fields(_type_name: &str) -> ::core::option::Option<&'static [&'static str]> {
                ::core::option::Option::None
            }
            pub fn decode_fields<'de, D>(
                _type_name: &str,
                _deserializer: D,
            ) -> ::core::option::Option<::core::result::Result<Self, D::Error>>
            where
                D: ::rollback_node::__private::serde::Deserializer<'de>,
            {
                ::core::option::Option::None
            }
        }

        #[allow(missing_docs)]
        #[derive(Debug, Clone, PartialEq)]
        pub enum Reply {}

        #[allow(missing_docs)]
        impl #impl_generics #self_ty #where_clause {
            pub fn decide(&self, request: &Request) -> ::core::result::Result<::rollback_node::core::Decision<Reply>, ::rollback_node::Refusal> {
                match *request {}
            }
        }
    }
}
