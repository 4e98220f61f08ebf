//! The keywords of `#[transition(...)]` and `#[protocol(...)]`.

use syn::parse::ParseStream;
use syn::{Attribute, LitStr, Path, Token};

/// What one `#[transition]` marker says.
pub struct TransitionAttr<'a> {
    /// The marker itself, for spans.
    pub original: &'a Attribute,
    /// `rename = "..."`: the wire name of the message, when it is not the method's name.
    pub rename: Option<LitStr>,
    /// `lane = Lane::Schema`: the message changes the state, decided and performed in this lane.
    pub lane: Option<Path>,
}

mod kw {
    syn::custom_keyword!(rename);
    syn::custom_keyword!(lane);
}

/// Whether an attribute is the `#[transition]` marker.
pub fn is_transition(attr: &Attribute) -> bool {
    attr.path().is_ident("transition")
}

/// Parses one `#[transition]`, `#[transition(rename = "name")]` or
/// `#[transition(lane = Lane::Name)]` marker (both keywords may be given).
pub fn transition(attr: &Attribute) -> syn::Result<TransitionAttr<'_>> {
    let mut parsed = TransitionAttr {
        original: attr,
        rename: None,
        lane: None,
    };
    if matches!(attr.meta, syn::Meta::Path(_)) {
        return Ok(parsed);
    }
    attr.parse_args_with(|input: ParseStream| {
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            if lookahead.peek(kw::rename) {
                let keyword: kw::rename = input.parse()?;
                input.parse::<Token![=]>()?;
                let name: LitStr = input.parse()?;
                if parsed.rename.is_some() {
                    return Err(syn::Error::new(keyword.span, "duplicate `rename`"));
                }
                if name.value().is_empty() {
                    return Err(syn::Error::new(
                        name.span(),
                        "a message name cannot be empty",
                    ));
                }
                parsed.rename = Some(name);
            } else if lookahead.peek(kw::lane) {
                let keyword: kw::lane = input.parse()?;
                input.parse::<Token![=]>()?;
                let lane: Path = input.parse()?;
                if parsed.lane.is_some() {
                    return Err(syn::Error::new(keyword.span, "duplicate `lane`"));
                }
                if lane.segments.len() < 2 {
                    return Err(syn::Error::new_spanned(
                        &lane,
                        "a lane is written as a path to an enum variant, such as `Lane::Schema`",
                    ));
                }
                parsed.lane = Some(lane);
            } else {
                return Err(lookahead.error());
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(())
    })?;
    Ok(parsed)
}

/// `#[protocol]` takes no arguments; anything given is an error at its first token.
pub fn protocol_args(args: proc_macro2::TokenStream) -> syn::Result<()> {
    match args.into_iter().next() {
        None => Ok(()),
        Some(first) => Err(syn::Error::new(
            first.span(),
            "#[protocol] takes no arguments; mark each message's method with #[transition]",
        )),
    }
}
