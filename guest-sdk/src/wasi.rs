//! Removes WASI from a guest module: every `wasi_snapshot_preview1` import becomes a call to
//! the module's own `kiln_wasi_<name>` export (from `kiln-wasi-stubs`); imports without a stub
//! return `ENOTCAPABLE` (76) or trap. The result imports only what its WIT world declares.
//! It also wraps the module's `cabi_realloc` so that empty lists can cross the boundary.

use walrus::ir::UnaryOp;
use walrus::{ExportItem, FunctionBuilder, FunctionId, ImportKind, Module, ValType};

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
    align_empty_allocations(&mut module)?;
    strip_exports(&mut module, is_internal_export);
    Ok(module.emit_wasm())
}

/// Points the `cabi_realloc` export at a wrapper that answers a zero-size request with the
/// requested alignment itself. javy's allocator answers every zero-size request with address
/// 1, which wasmtime refuses for a list whose elements are aligned to 4 ("realloc return:
/// result not aligned"): an empty page, an empty environment, a response without headers.
fn align_empty_allocations(module: &mut Module) -> Result<()> {
    let Some((export, original)) = module.exports.iter().find_map(|e| match e.item {
        ExportItem::Function(f) if e.name == "cabi_realloc" => Some((e.id(), f)),
        _ => None,
    }) else {
        return Ok(());
    };
    const I32: ValType = ValType::I32;
    let ty = module.types.get(module.funcs.get(original).ty());
    if ty.params() != [I32; 4] || ty.results() != [I32] {
        return Err(SdkError::Wasm("`cabi_realloc` has the wrong signature".to_owned()));
    }
    let args: Vec<_> = (0..4).map(|_| module.locals.add(I32)).collect();
    let mut wrapper = FunctionBuilder::new(&mut module.types, &[I32; 4], &[I32]);
    // (old_ptr, old_len, align, new_len): a zero-size block needs no memory, only an address
    // with the alignment, and the alignment itself is one (a power of two, at least 1).
    wrapper.func_body().local_get(args[3]).unop(UnaryOp::I32Eqz).if_else(
        I32,
        |then| {
            then.local_get(args[2]);
        },
        |otherwise| {
            for a in &args {
                otherwise.local_get(*a);
            }
            otherwise.call(original);
        },
    );
    let wrapper = wrapper.finish(args, &mut module.funcs);
    module.exports.get_mut(export).item = ExportItem::Function(wrapper);
    Ok(())
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
