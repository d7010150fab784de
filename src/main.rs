/// mimalloc: the warm Check path allocates and frees many small buffers across threads,
/// which glibc's allocator serves more slowly (see the README's Performance section).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keygate::cli::main()
}
