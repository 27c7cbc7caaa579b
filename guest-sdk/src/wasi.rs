//! Removes WASI from a guest module: every `wasi_snapshot_preview1` import becomes a call to
//! the module's own `kiln_wasi_<name>` export (from `kiln-wasi-stubs`); imports without a stub
//! return `ENOTCAPABLE` (76) or trap. The result imports only what its WIT world declares.

use walrus::{ExportItem, FunctionId, ImportKind, Module, ValType};

use crate::error::{Result, SdkError};

const WASI_MODULE: &str = "wasi_snapshot_preview1";
const STUB_PREFIX: &str = "kiln_wasi_";
const ENOTCAPABLE: i32 = 76;

/// Exports that must not reach a component: the stubs themselves and javy's plugin ABI.
fn is_internal_export(name: &str) -> bool {
    name.starts_with(STUB_PREFIX) || name == "invoke" || name == "compile-src"
}

/// Rewrites WASI imports into calls of the in-module stubs and drops internal exports.
pub fn virtualize(wasm: &[u8]) -> Result<Vec<u8>> {
    let mut module = Module::from_buffer(wasm).map_err(SdkError::wasm)?;
    let wasi: Vec<(FunctionId, String)> = module
        .imports
        .iter()
        .filter(|i| i.module == WASI_MODULE)
        .filter_map(|i| match i.kind {
            ImportKind::Function(f) => Some((f, i.name.clone())),
            _ => None,
        })
        .collect();
    for (import, name) in wasi {
        let stub = module.exports.iter().find_map(|e| match e.item {
            ExportItem::Function(f) if e.name == format!("{STUB_PREFIX}{name}") => Some(f),
            _ => None,
        });
        let import_ty = module.types.get(module.funcs.get(import).ty()).clone();
        if let Some(stub) = stub {
            let stub_ty = module.types.get(module.funcs.get(stub).ty());
            if stub_ty.params() != import_ty.params() || stub_ty.results() != import_ty.results() {
                return Err(SdkError::Wasm(format!("the stub for WASI `{name}` has the wrong signature")));
            }
        }
        module
            .replace_imported_func(import, |(body, args)| match stub {
                Some(stub) => {
                    for a in args {
                        body.local_get(*a);
                    }
                    body.call(stub);
                }
                None if import_ty.results() == [ValType::I32] => {
                    body.i32_const(ENOTCAPABLE);
                }
                None => {
                    body.unreachable();
                }
            })
            .map_err(SdkError::wasm)?;
    }
    strip_exports(&mut module, is_internal_export);
    Ok(module.emit_wasm())
}

/// Drops exports matching `drop` and everything only they kept alive.
pub fn strip_exports(module: &mut Module, drop: impl Fn(&str) -> bool) {
    let doomed: Vec<_> = module.exports.iter().filter(|e| drop(&e.name)).map(|e| e.id()).collect();
    for id in doomed {
        module.exports.delete(id);
    }
    walrus::passes::gc::run(module);
}

/// The names of a module's imports, as `module.name`.
pub fn import_names(wasm: &[u8]) -> Result<Vec<String>> {
    let module = Module::from_buffer(wasm).map_err(SdkError::wasm)?;
    Ok(module.imports.iter().map(|i| format!("{}.{}", i.module, i.name)).collect())
}
