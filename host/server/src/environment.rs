//! A deployment's environment variables: Convex's rules for them (names, sizes, counts), and
//! the changes the `convex` CLI sends (`npx convex env set|remove`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{Result, ServerError};

/// Variables a deployment may have (Convex's limit).
pub const MAX_VARIABLES: usize = 512;
/// The size of all names and values together (Convex's limit).
pub const MAX_TOTAL_BYTES: usize = 512 << 10;
/// The length of a name (Convex's limit).
pub const MAX_NAME_LEN: usize = 256;
/// The size of a value (Convex's limit).
pub const MAX_VALUE_BYTES: usize = 8 << 10;

/// One change: a new value, or `null` to remove the variable.
#[derive(Debug, Deserialize)]
pub struct Change {
    /// The variable.
    pub name: String,
    /// Its new value; `None` removes it.
    pub value: Option<String>,
}

fn invalid(message: String) -> ServerError {
    ServerError::InvalidEnvironmentVariables(message)
}

/// Checks a name: a letter first, then letters, digits and underscores.
pub fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let well_formed =
        chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !well_formed {
        return Err(invalid(format!(
            "environment variable name {name:?} is invalid: it must start with a letter and contain only letters, \
             numbers and underscores"
        )));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "environment variable name {name:?} is {} characters long, over the limit of {MAX_NAME_LEN}",
            name.len()
        )));
    }
    Ok(())
}

/// Checks a whole set of variables against Convex's rules.
pub fn check(env: &BTreeMap<String, String>) -> Result<()> {
    if env.len() > MAX_VARIABLES {
        return Err(invalid(format!("{} environment variables, over the limit of {MAX_VARIABLES}", env.len())));
    }
    let mut total = 0;
    for (name, value) in env {
        check_name(name)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(invalid(format!(
                "the value of environment variable {name} is {} bytes, over the limit of {MAX_VALUE_BYTES}",
                value.len()
            )));
        }
        total += name.len() + value.len();
    }
    if total > MAX_TOTAL_BYTES {
        return Err(invalid(format!(
            "environment variables take {total} bytes, over the limit of {MAX_TOTAL_BYTES} for all names and values"
        )));
    }
    Ok(())
}

/// `env` with `changes` applied in order, checked; `env` itself is left as it was.
pub fn changed(env: &BTreeMap<String, String>, changes: &[Change]) -> Result<BTreeMap<String, String>> {
    let mut next = env.clone();
    for change in changes {
        check_name(&change.name)?;
        match &change.value {
            Some(value) => next.insert(change.name.clone(), value.clone()),
            None => next.remove(&change.name),
        };
    }
    check(&next)?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, value: &str) -> Change {
        Change { name: name.to_owned(), value: Some(value.to_owned()) }
    }

    #[test]
    fn changes_apply_in_order_and_removing_a_missing_name_is_no_error() {
        let env = BTreeMap::from([("A".to_owned(), "1".to_owned())]);
        let remove = |name: &str| Change { name: name.to_owned(), value: None };
        let next = changed(&env, &[set("B", "2"), set("A", "3"), remove("B"), remove("NEVER_SET")]).unwrap();
        assert_eq!(next, BTreeMap::from([("A".to_owned(), "3".to_owned())]));
        assert_eq!(env["A"], "1", "the original is untouched");
    }

    #[test]
    fn convex_rules_are_enforced_with_a_stable_code() {
        let env = BTreeMap::new();
        for bad in ["", "1A", "_A", "A-B", "A B", "É"] {
            let e = changed(&env, &[set(bad, "x")]).unwrap_err();
            assert_eq!(e.code(), "InvalidEnvironmentVariables", "{bad:?}");
        }
        assert!(changed(&env, &[set(&"A".repeat(MAX_NAME_LEN), "x")]).is_ok());
        assert!(changed(&env, &[set(&"A".repeat(MAX_NAME_LEN + 1), "x")]).is_err());
        assert!(changed(&env, &[set("A", &"x".repeat(MAX_VALUE_BYTES))]).is_ok());
        let e = changed(&env, &[set("A", &"x".repeat(MAX_VALUE_BYTES + 1))]).unwrap_err();
        assert!(e.to_string().contains("over the limit"), "{e}");
        let many: Vec<Change> = (0..=MAX_VARIABLES).map(|i| set(&format!("V{i}"), "x")).collect();
        assert!(changed(&env, &many).unwrap_err().to_string().contains("513 environment variables"));
        let big: Vec<Change> = (0..70).map(|i| set(&format!("V{i}"), &"x".repeat(MAX_VALUE_BYTES))).collect();
        assert!(changed(&env, &big).unwrap_err().to_string().contains("for all names and values"));
    }
}
