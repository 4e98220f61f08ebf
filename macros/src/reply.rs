//! `#[derive(Reply)]`: a struct with named fields becomes a reply body whose wire `type` is the
//! struct's name in snake_case and whose fields follow `type` and `in_reply_to` in declaration
//! order, written straight into the envelope's map (no intermediate value).

use heck::ToSnakeCase;
use proc_macro2::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, Error, Fields};

/// Field names the reply's envelope already writes.
const RESERVED: &[&str] = &["type", "in_reply_to"];

/// Expands the derive, or returns an error spanned at what to change.
pub fn derive(input: &DeriveInput) -> syn::Result<TokenStream> {
    let fields =
        match &input.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(named) => named.named.iter().collect(),
                Fields::Unit => Vec::new(),
                Fields::Unnamed(_) => return Err(Error::new_spanned(
                    &data.fields,
                    "#[derive(Reply)] needs named fields: each becomes a field of the reply body",
                )),
            },
            _ => {
                return Err(Error::new(
                    input.ident.span(),
                    "#[derive(Reply)] works on a struct with named fields, one per reply field",
                ))
            }
        };
    let mut errors: Option<Error> = None;
    for field in &fields {
        let name = field.ident.as_ref().expect("named field").to_string();
        let name = name.trim_start_matches("r#");
        if RESERVED.contains(&name) {
            let error = Error::new_spanned(
                field.ident.as_ref(),
                format!("`{name}` is written by the envelope; a reply body cannot declare it"),
            );
            match &mut errors {
                Some(all) => all.combine(error),
                None => errors = Some(error),
            }
        }
    }
    if let Some(errors) = errors {
        return Err(errors);
    }

    let ident = &input.ident;
    let type_name = ident.to_string().to_snake_case();
    let idents: Vec<_> = fields.iter().map(|f| f.ident.as_ref()).collect();
    let keys = idents.iter().map(|i| {
        i.expect("named field")
            .to_string()
            .trim_start_matches("r#")
            .to_owned()
    });
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics ::rollback_node::ReplyBody for #ident #ty_generics #where_clause {
            fn type_name(&self) -> &'static str {
                #type_name
            }

            fn serialize_fields<M>(&self, map: &mut M) -> ::core::result::Result<(), M::Error>
            where
                M: ::rollback_node::__private::serde::ser::SerializeMap,
            {
                #( map.serialize_entry(#keys, &self.#idents)?; )*
                ::core::result::Result::Ok(())
            }
        }
    })
}
