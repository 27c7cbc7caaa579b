//! Bundling: every module of the app's `convex/` folder into one ES module whose `modules`
//! export maps module paths (`messages`, `dir/module`) to their namespaces. esbuild resolves
//! the `convex` package from the app's own `node_modules`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Result, SdkError};

/// A bundled app.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// The bundle's JavaScript source.
    pub source: String,
    /// The module paths it contains, sorted.
    pub modules: Vec<String>,
    /// Why the fast paths were not applied to a bundle that asked for them, if they were not.
    pub fast_paths_off: Option<String>,
}

const EXTENSIONS: [&str; 5] = ["ts", "tsx", "js", "jsx", "mjs"];

/// The app's modules as (module path, file), sorted. Skips `_generated/`, hidden files and
/// folders, `.d.ts` files and names with more than one dot (tests, configs).
pub fn modules(convex_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut pending = vec![convex_dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| SdkError::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| SdkError::io(&dir, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "_generated" || name == "node_modules" {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let Some((stem, ext)) = name.rsplit_once('.') else { continue };
            if !EXTENSIONS.contains(&ext) || stem.contains('.') {
                continue;
            }
            let rel = path.strip_prefix(convex_dir).unwrap_or(&path).with_extension("");
            let module = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
            out.push((module, path));
        }
    }
    out.sort();
    Ok(out)
}

/// What the files of the app's `convex/` folder declare that Kiln does not run yet, each
/// named with its file: components (`convex.config.ts`) and Node.js modules (`"use node"`).
pub fn unsupported_files(convex_dir: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    if !convex_dir.is_dir() {
        return Ok(found);
    }
    for ext in EXTENSIONS {
        if convex_dir.join(format!("convex.config.{ext}")).exists() {
            found.push(format!("components (convex/convex.config.{ext}) are not supported yet"));
        }
    }
    for (_, file) in modules(convex_dir)? {
        let text = std::fs::read_to_string(&file).map_err(|e| SdkError::io(&file, e))?;
        if uses_node(&text) {
            let rel = file.strip_prefix(convex_dir).unwrap_or(&file);
            found.push(format!("Node.js modules (\"use node\" in convex/{}) are not supported yet", rel.display()));
        }
    }
    Ok(found)
}

/// Whether a module starts with the `"use node"` directive (after comments and blank lines).
fn uses_node(text: &str) -> bool {
    let mut rest = text.trim_start_matches('\u{feff}');
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r);
        } else {
            break;
        }
    }
    rest.starts_with("\"use node\"") || rest.starts_with("'use node'")
}

/// Finds esbuild: `given` (the `kiln` binary passes `KILN_ESBUILD`), the app's
/// `node_modules` (the `convex` package depends on it), or the guest SDK's own.
pub fn find_esbuild(app_dir: &Path, given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let candidates = [
        app_dir.join("node_modules/.bin/esbuild"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("node_modules/.bin/esbuild"),
    ];
    candidates.into_iter().find(|p| p.exists()).ok_or_else(|| {
        SdkError::ToolMissing(format!(
            "esbuild not found: run `npm install` in {} (the `convex` package brings esbuild) or set KILN_ESBUILD",
            app_dir.display()
        ))
    })
}

/// Bundles the app at `app_dir`, with the [`crate::fast_paths`] unless `fast_paths` is false.
/// The entry file and the bundle are written to `<app>/.kiln/`.
pub fn bundle(app_dir: &Path, fast_paths: bool, esbuild: Option<&Path>) -> Result<Bundle> {
    let app_dir = &std::fs::canonicalize(app_dir).map_err(|e| SdkError::io(app_dir, e))?;
    let convex_dir = app_dir.join("convex");
    if !convex_dir.is_dir() {
        return Err(SdkError::NotAnApp(format!("{} has no convex/ folder", app_dir.display())));
    }
    let modules = modules(&convex_dir)?;
    if modules.is_empty() {
        return Err(SdkError::NotAnApp(format!("{} has no modules", convex_dir.display())));
    }
    let out_dir = app_dir.join(".kiln");
    std::fs::create_dir_all(&out_dir).map_err(|e| SdkError::io(&out_dir, e))?;
    let mut entry = String::from("// Generated by `kiln build`: every module of convex/, by path.\n");
    for (i, (_, file)) in modules.iter().enumerate() {
        let rel = file.strip_prefix(app_dir).unwrap_or(file);
        entry.push_str(&format!(
            "import * as m{i} from {};\n",
            serde_json::to_string(&format!("../{}", rel.display())).unwrap_or_default()
        ));
    }
    // `auth.config.ts` joins the modules under its dotted name, which no module of functions
    // can have: the guest's `analyze` reports its default export.
    let auth_config = EXTENSIONS.iter().map(|ext| convex_dir.join(format!("auth.config.{ext}"))).find(|p| p.is_file());
    if let Some(file) = &auth_config {
        let rel = file.strip_prefix(app_dir).unwrap_or(file);
        entry.push_str(&format!(
            "import * as authConfig from {};\n",
            serde_json::to_string(&format!("../{}", rel.display())).unwrap_or_default()
        ));
    }
    entry.push_str("export const modules = {\n");
    for (i, (name, _)) in modules.iter().enumerate() {
        entry.push_str(&format!("  {}: m{i},\n", serde_json::to_string(name).unwrap_or_default()));
    }
    if auth_config.is_some() {
        entry.push_str("  \"auth.config\": authConfig,\n");
    }
    entry.push_str("};\n");
    let entry_path = out_dir.join("entry.mjs");
    std::fs::write(&entry_path, entry).map_err(|e| SdkError::io(&entry_path, e))?;

    let esbuild = find_esbuild(app_dir, esbuild)?;
    let bundle_path = out_dir.join("bundle.js");
    let output = Command::new(&esbuild)
        .current_dir(app_dir)
        .arg(".kiln/entry.mjs")
        .args(crate::esbuild_flags::ESBUILD_FLAGS)
        .arg("--outfile=.kiln/bundle.js")
        .output()
        .map_err(|e| SdkError::ToolMissing(format!("could not run {}: {e}", esbuild.display())))?;
    if !output.status.success() {
        return Err(SdkError::Bundle(String::from_utf8_lossy(&output.stderr).trim().to_owned()));
    }
    let source = std::fs::read_to_string(&bundle_path).map_err(|e| SdkError::io(&bundle_path, e))?;
    let mut fast_paths_off = None;
    let source = if fast_paths {
        let source = match crate::fast_paths::install(&source) {
            Ok((source, installed)) => {
                tracing::debug!(?installed, "fast paths");
                source
            }
            Err(why) => {
                let warning = format!(
                    "fast paths off: {why}; the app runs unchanged, at {}",
                    crate::fast_paths::FUEL_WITHOUT_FAST_PATHS
                );
                tracing::debug!("{warning}");
                fast_paths_off = Some(warning);
                source
            }
        };
        // What runs is what `.kiln/bundle.js` shows.
        std::fs::write(&bundle_path, &source).map_err(|e| SdkError::io(&bundle_path, e))?;
        source
    } else {
        source
    };
    Ok(Bundle { source, modules: modules.into_iter().map(|(m, _)| m).collect(), fast_paths_off })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_discovery_follows_convex_rules() {
        let dir = tempfile::tempdir().unwrap();
        for file in ["a.ts", "b.test.ts", "_generated/api.js", ".hidden.ts", "dir/c.js", "d.d.ts", "notes.md", "e.tsx"]
        {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "").unwrap();
        }
        let names: Vec<String> = modules(dir.path()).unwrap().into_iter().map(|(m, _)| m).collect();
        assert_eq!(names, vec!["a", "dir/c", "e"]);
    }

    #[test]
    fn the_use_node_directive_is_found_after_comments_only() {
        assert!(uses_node("\"use node\";\nexport const a = 1;"));
        assert!(uses_node("// an action\n/* with a block */\n'use node';"));
        assert!(!uses_node("export const a = \"use node\";"));
        assert!(!uses_node("// \"use node\" is mentioned here only\nexport {};"));
    }
}
