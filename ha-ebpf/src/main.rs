//! XDP programs of the HA data plane.
//!
//! Entry points are thin: they call a `try_` function and turn an error into a
//! verdict. Every packet byte is read through [`ptr_at`], the one bounds check.
//!
//! The crate is only meant for `bpfel-unknown-none`; on the host (clippy, rustdoc)
//! it builds as an ordinary binary with an empty `main`, because the host build of
//! its dependencies links `std` and would clash with our panic handler.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod data;
mod flow;
mod flow6;
mod hdr;
mod heartbeat;
mod link;
mod probe;

use core::mem;

use aya_ebpf::programs::XdpContext;

/// Returns a pointer to a `T` at `offset` bytes into the frame, or `Err` when the
/// frame is too short to hold it.
///
/// The comparison against `data_end` is what the verifier needs to see before
/// any access to packet memory.
#[inline(always)]
pub(crate) fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    let len = mem::size_of::<T>();
    if start + offset + len > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

/// Copies a `T` at `offset` bytes into the frame, or `Err` when the frame is too
/// short. Headers are small; reading them by value keeps `unsafe` in one place.
#[inline(always)]
pub(crate) fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, ()> {
    let ptr = ptr_at::<T>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that `size_of::<T>()` bytes at `ptr` lie inside the
    // frame; `read_unaligned` copes with any alignment.
    Ok(unsafe { ptr.read_unaligned() })
}

/// `bpf_ktime_get_coarse_ns`: CLOCK_MONOTONIC_COARSE, the clock the agent writes
/// leases in (CLOCK_MONOTONIC) read at kernel-tick resolution (4 ms at
/// CONFIG_HZ=250). It costs a memory read where `bpf_ktime_get_ns` reads the
/// clocksource (about 25 ns per packet in a VM); a lease lapses up to one tick
/// late, which the lease length documentation accounts for.
#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: helper without arguments or side effects.
    unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns() }
}

/// `bpf_ktime_get_ns`: CLOCK_MONOTONIC read from the clocksource, for what
/// must be exact and happens rarely (a flow event's timestamp, from which
/// the agent measures replication lag: [`now_ns`] would make it look up to
/// a tick longer than it was).
#[inline(always)]
pub(crate) fn now_precise_ns() -> u64 {
    // SAFETY: helper without arguments or side effects.
    unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_ns() }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path to here.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

/// GPL-compatible license so the programs may use GPL-only helpers
/// (`bpf_ktime_get_ns`, ring buffers, ...).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
