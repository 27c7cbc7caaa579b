//! System functions: queries under `_system/` that the `convex` CLI calls through the ordinary
//! query paths (WebSocket and HTTP) as an admin. The host answers them itself: they are not in
//! the app's component, and they work before any app is deployed. One Kiln does not serve is
//! refused by name.

use std::collections::BTreeMap;

use kiln_runtime::CallError;
use kiln_value::{Object, Value};

/// Whether `path` names a system function.
pub fn is_system(path: &str) -> bool {
    path.trim_start_matches('/').starts_with("_system/")
}

/// What a system query answers, for a deployment whose environment is `env`.
pub fn query(env: &BTreeMap<String, String>, admin: bool, path: &str, args: &Value) -> Result<Value, CallError> {
    let path = kiln_runtime::normalize_path(path);
    if !admin {
        return Err(CallError::new("Unauthorized", format!("{path} is a system function: it needs an admin key")));
    }
    let variable = |name: &str, value: &str| {
        Value::Object(Object::from([
            ("name".to_owned(), Value::String(name.to_owned())),
            ("value".to_owned(), Value::String(value.to_owned())),
        ]))
    };
    match path.as_str() {
        "_system/cli/queryEnvironmentVariables:default" => {
            Ok(Value::Array(env.iter().map(|(name, value)| variable(name, value)).collect()))
        }
        "_system/cli/queryEnvironmentVariables:get" => {
            let name = match args {
                Value::Object(o) => o.get("name").and_then(Value::as_str),
                _ => None,
            };
            let Some(name) = name else {
                return Err(CallError::new("InvalidArgs", format!("{path} takes {{ name: string }}")));
            };
            Ok(env.get(name).map_or(Value::Null, |value| variable(name, value)))
        }
        _ => Err(CallError::new(
            "UnsupportedSystemFunction",
            format!("the system function {path} is not supported by this version of Kiln"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_queries_answer_admins_only_and_unknown_ones_are_refused_by_name() {
        let env = BTreeMap::from([("B".to_owned(), "2".to_owned()), ("A".to_owned(), "1".to_owned())]);
        let none = Value::Object(Object::new());
        let list = query(&env, true, "_system/cli/queryEnvironmentVariables", &none).unwrap();
        let Value::Array(items) = list else { panic!("{list:?}") };
        let names: Vec<_> = items
            .iter()
            .map(|v| match v {
                Value::Object(o) => o["name"].as_str().unwrap().to_owned(),
                _ => panic!(),
            })
            .collect();
        assert_eq!(names, ["A", "B"]);
        let arg = |name: &str| Value::Object(Object::from([("name".to_owned(), Value::from(name))]));
        let got = query(&env, true, "_system/cli/queryEnvironmentVariables.js:get", &arg("B")).unwrap();
        assert!(matches!(&got, Value::Object(o) if o["value"].as_str() == Some("2")), "{got:?}");
        assert_eq!(query(&env, true, "_system/cli/queryEnvironmentVariables:get", &arg("C")).unwrap(), Value::Null);
        assert_eq!(
            query(&env, true, "_system/cli/queryEnvironmentVariables:get", &none).unwrap_err().code,
            "InvalidArgs"
        );
        assert_eq!(
            query(&env, false, "_system/cli/queryEnvironmentVariables", &none).unwrap_err().code,
            "Unauthorized"
        );
        let e = query(&env, true, "_system/cli/tables", &none).unwrap_err();
        assert_eq!(e.code, "UnsupportedSystemFunction");
        assert!(e.message.contains("_system/cli/tables:default"), "{}", e.message);
        assert!(is_system("/_system/x") && !is_system("messages:list"));
    }
}
