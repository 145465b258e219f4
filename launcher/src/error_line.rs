//! One line for an error and its causes, as users see it on stderr.

/// "outer: cause: reason", like anyhow's `{:#}`, except that a cause is left
/// out when the text before it already ends with it: several error types
/// (ours and others') both print their source in their message and return it
/// from `source()`, which `{:#}` would print twice.
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::one_line;
    use anyhow::Context as _;

    /// An error that prints its source in its message and also returns it.
    #[derive(Debug)]
    struct Embeds(std::io::Error);

    impl std::fmt::Display for Embeds {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "reading x.gguf: {}", self.0)
        }
    }

    impl std::error::Error for Embeds {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_embedded_in_its_parent_is_printed_once() {
        let io = std::io::Error::other("disk on fire");
        let e = Err::<(), _>(Embeds(io))
            .context("loading model x.gguf")
            .unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "loading model x.gguf: reading x.gguf: disk on fire: disk on fire"
        );
        assert_eq!(
            one_line(&e),
            "loading model x.gguf: reading x.gguf: disk on fire"
        );
    }

    #[test]
    fn causes_not_embedded_are_all_printed() {
        let e = anyhow::anyhow!("reason")
            .context("step 2")
            .context("step 1");
        assert_eq!(one_line(&e), "step 1: step 2: reason");
    }
}
