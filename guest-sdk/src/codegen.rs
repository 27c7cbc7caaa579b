//! `kiln codegen`: the `convex/_generated/` files Convex apps import (`server`, `api`,
//! `dataModel`), generated from the app's modules so that `tsc` type-checks it; the same for
//! each component defined inside `convex/` (a folder with a `convex.config` file).

use std::path::{Path, PathBuf};

use crate::bundle::{config_file, modules};
use crate::error::{Result, SdkError};

const SERVER_JS: &str = include_str!("../templates/server.js");
const SERVER_DTS: &str = include_str!("../templates/server.d.ts");
const API_JS: &str = include_str!("../templates/api.js");
const API_DTS: &str = include_str!("../templates/api.d.ts");
const DATA_MODEL_DTS: &str = include_str!("../templates/dataModel.d.ts");
const DATA_MODEL_NO_SCHEMA_DTS: &str = include_str!("../templates/dataModel.noschema.d.ts");

/// Writes `convex/_generated/*` for the app at `app_dir`, and `_generated/*` in each component
/// folder inside `convex/`; returns the files that changed (relative to `convex/`).
pub fn codegen(app_dir: &Path) -> Result<Vec<String>> {
    let convex_dir = app_dir.join("convex");
    if !convex_dir.is_dir() {
        return Err(SdkError::NotAnApp(format!("{} has no convex/ folder", app_dir.display())));
    }
    let mut changed = generate(&convex_dir)?;
    for dir in local_components(&convex_dir)? {
        let rel = dir.strip_prefix(&convex_dir).unwrap_or(&dir).display().to_string();
        changed.extend(generate(&dir)?.into_iter().map(|name| format!("{rel}/_generated/{name}")));
    }
    Ok(changed)
}

/// The folders under `convex_dir` holding a `convex.config` file, sorted.
fn local_components(convex_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![convex_dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| SdkError::io(&dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| SdkError::io(&dir, e))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if !path.is_dir() || name.starts_with('.') || name == "_generated" || name == "node_modules" {
                continue;
            }
            if config_file(&path).is_some() {
                found.push(path.clone());
            }
            pending.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Writes `<dir>/_generated/*` from the modules of `dir`; returns the names that changed.
fn generate(convex_dir: &Path) -> Result<Vec<String>> {
    let mods = modules(convex_dir)?;
    let has_schema = mods.iter().any(|(m, _)| m == "schema");
    let api_modules: Vec<&str> = mods.iter().map(|(m, _)| m.as_str()).filter(|m| *m != "schema").collect();
    let ident = |m: &str| m.replace(['/', '-'], "_");
    let imports: String =
        api_modules.iter().map(|m| format!("import type * as {} from \"../{m}.js\";\n", ident(m))).collect();
    let entries: String = api_modules
        .iter()
        .map(|m| format!("  {}: typeof {};\n", serde_json::to_string(m).unwrap_or_default(), ident(m)))
        .collect();
    let api_dts = API_DTS.replace("/*IMPORTS*/\n", &imports).replace("/*MODULES*/\n", &entries);
    let data_model = if has_schema { DATA_MODEL_DTS } else { DATA_MODEL_NO_SCHEMA_DTS };
    let out = convex_dir.join("_generated");
    std::fs::create_dir_all(&out).map_err(|e| SdkError::io(&out, e))?;
    let mut changed = Vec::new();
    for (name, content) in [
        ("server.js", SERVER_JS),
        ("server.d.ts", SERVER_DTS),
        ("api.js", API_JS),
        ("api.d.ts", api_dts.as_str()),
        ("dataModel.d.ts", data_model),
    ] {
        let path = out.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(content) {
            std::fs::write(&path, content).map_err(|e| SdkError::io(&path, e))?;
            changed.push(name.to_owned());
        }
    }
    Ok(changed)
}
