//! Links the guest with guest-rt's linker script (see `guest_rt::build`).
fn main() {
    guest_rt::build::link_guest();
}
