//! Subscription filters. Tag expressions (`*`, `TagA`, `TagA || TagB`) are evaluated here;
//! SQL92 expressions are refused with a clear error (not supported yet).

use std::collections::HashSet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagFilter {
    All,
    Tags(HashSet<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("SQL92 filter expressions are not supported by this broker yet; use a tag expression")]
    SqlUnsupported,
    #[error("invalid tag expression {0:?}: expected *, a tag, or tags joined by ||")]
    Invalid(String),
}

impl TagFilter {
    pub fn parse_tag(expression: &str) -> Result<TagFilter, FilterError> {
        let e = expression.trim();
        if e.is_empty() || e == "*" {
            return Ok(TagFilter::All);
        }
        let mut tags = HashSet::new();
        for part in e.split("||") {
            let t = part.trim();
            if t.is_empty() || t.contains(char::is_whitespace) {
                return Err(FilterError::Invalid(expression.to_owned()));
            }
            tags.insert(t.to_owned());
        }
        Ok(TagFilter::Tags(tags))
    }

    /// Whether a message with these tags (`None`: untagged) passes.
    pub fn matches(&self, tag: Option<&str>) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::Tags(set) => tag.is_some_and(|t| set.contains(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert_eq!(TagFilter::parse_tag("*"), Ok(TagFilter::All));
        assert_eq!(TagFilter::parse_tag(""), Ok(TagFilter::All));
        let f = TagFilter::parse_tag("a || b").unwrap();
        assert!(f.matches(Some("a")) && f.matches(Some("b")));
        assert!(!f.matches(Some("c")) && !f.matches(None));
        assert!(TagFilter::parse_tag("a || ").is_err());
        assert!(TagFilter::All.matches(None));
    }
}
