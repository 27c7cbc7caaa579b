//! Links the runtime with a large shadow stack (QuickJS's C stack, in linear memory), so that
//! deep JavaScript recursion exhausts the engine's native stack first and ends in a clean
//! stack-overflow trap. Untouched stack pages cost nothing: instances map memory copy-on-write.

fn main() {
    println!("cargo:rustc-link-arg=-zstack-size=8388608");
}
