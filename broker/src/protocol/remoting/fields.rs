//! Typed access to a request's custom header (`extFields`, all values strings), with errors
//! that name the field.

use std::collections::HashMap;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("request header field {0:?} is missing")]
    Missing(&'static str),
    #[error("request header field {key:?} = {value:?} is not a valid {kind}")]
    Invalid {
        key: &'static str,
        value: String,
        kind: &'static str,
    },
}

/// A request's `extFields`, read by name.
#[derive(Clone, Copy)]
pub struct Fields<'a>(pub &'a HashMap<String, String>);

impl<'a> Fields<'a> {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.0.get(key).map(String::as_str)
    }

    /// The value of `key`; an error if it is missing.
    pub fn str(&self, key: &'static str) -> Result<&'a str, FieldError> {
        self.get(key).ok_or(FieldError::Missing(key))
    }

    /// The value of `key` parsed as `T`.
    pub fn parse<T: FromStr>(&self, key: &'static str) -> Result<T, FieldError> {
        let value = self.str(key)?;
        value.trim().parse().map_err(|_| FieldError::Invalid {
            key,
            value: value.to_owned(),
            kind: std::any::type_name::<T>(),
        })
    }

    /// The value of `key` parsed as `T`, or `default` when it is absent.
    pub fn parse_or<T: FromStr>(&self, key: &'static str, default: T) -> Result<T, FieldError> {
        match self.get(key) {
            None => Ok(default),
            Some(_) => self.parse(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let map: HashMap<String, String> = [("queueId".to_owned(), "x".to_owned())].into();
        let f = Fields(&map);
        assert_eq!(
            f.parse::<i32>("queueId").unwrap_err().to_string(),
            "request header field \"queueId\" = \"x\" is not a valid i32"
        );
        assert_eq!(f.str("topic"), Err(FieldError::Missing("topic")));
        assert_eq!(f.parse_or("maxMsgNums", 32), Ok(32));
    }
}
