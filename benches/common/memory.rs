//! This process's memory as the kernel counts it, for the benches' per-item figures.

/// Resident memory of this process, in bytes (`VmRSS`).
pub fn resident() -> u64 {
    status_bytes("VmRSS:")
}

/// The most resident memory this process has had, in bytes (`VmHWM`).
#[allow(dead_code)] // not every bench needs the peak
pub fn peak() -> u64 {
    status_bytes("VmHWM:")
}

/// A figure in KiB from `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("no /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}
