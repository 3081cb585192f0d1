//! `--backend auto|heap|heap:NAME|udmabuf|portable`, shared by the
//! subcommands that allocate.

use dmabuf::{Allocator, Backend};

/// The values `--backend` accepts, for help texts.
pub const BACKEND_HELP: &str =
    "auto (the system heap, else udmabuf, else portable), heap, heap:NAME, udmabuf or portable";

/// A checked `--backend` value: `None` is `auto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice(pub Option<Backend>);

/// Parses a `--backend` value (clap value parser).
pub fn parse(s: &str) -> Result<Choice, String> {
    if s == "auto" {
        return Ok(Choice(None));
    }
    s.parse::<Backend>()
        .map(|b| Choice(Some(b)))
        .map_err(|_| format!("unknown backend '{s}'; expected {BACKEND_HELP}"))
}

impl Choice {
    /// The allocator: the automatic choice, or exactly the backend asked
    /// for (an error saying why it is not available here).
    /// With `-v`, a note says which backend and why.
    pub fn allocator(&self) -> dmabuf::Result<Allocator> {
        let a = match &self.0 {
            None => Allocator::auto(),
            Some(b) => Allocator::new(b)?,
        };
        note!(
            "backend {}: {}",
            crate::out::escape(&a.backend().to_string()),
            crate::out::escape(a.reason())
        );
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse() {
        assert_eq!(parse("auto").unwrap(), Choice(None));
        assert_eq!(
            parse("heap").unwrap(),
            Choice(Some(Backend::Heap("system".into())))
        );
        assert_eq!(
            parse("heap:linux,cma").unwrap(),
            Choice(Some(Backend::Heap("linux,cma".into())))
        );
        assert_eq!(parse("udmabuf").unwrap(), Choice(Some(Backend::Udmabuf)));
        assert_eq!(parse("portable").unwrap(), Choice(Some(Backend::Portable)));
        let e = parse("gpu").unwrap_err();
        assert!(e.contains("unknown backend 'gpu'"), "{e}");
        assert!(parse("heap:").is_err());
    }

    #[test]
    fn portable_is_always_available() {
        let a = parse("portable").unwrap().allocator().unwrap();
        assert_eq!(a.backend(), Backend::Portable);
    }
}
