//! A worker's view of the path MTU to its peer. PURE.

use crate::wire::OuterFamily;

/// The path MTU, outer headers included, and the inner packets it leaves room for (never more
/// than the device MTU). Each worker has its own: nothing is shared between workers.
#[derive(Debug, Clone, Copy)]
pub struct PathMtu {
    pub family: OuterFamily,
    pub path_mtu: usize,
    pub inner_mtu: usize,
    pub device_mtu: usize,
}

impl PathMtu {
    /// Until the kernel says otherwise, the path takes what the device MTU was chosen for.
    pub fn new(family: OuterFamily, device_mtu: usize, known: Option<usize>) -> PathMtu {
        let mut path = PathMtu {
            family,
            path_mtu: 0,
            inner_mtu: device_mtu,
            device_mtu,
        };
        path.set(known.unwrap_or(device_mtu + family.overhead()));
        path
    }

    /// Takes `path_mtu` as the path's MTU. Returns whether it changed.
    pub fn set(&mut self, path_mtu: usize) -> bool {
        // An IPv4 host takes 68 bytes at least (RFC 791); nothing below makes sense to work to.
        let inner = path_mtu
            .saturating_sub(self.family.overhead())
            .min(self.device_mtu)
            .max(68);
        let changed = path_mtu != self.path_mtu;
        self.path_mtu = path_mtu;
        self.inner_mtu = inner;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inner_mtu_follows_the_path_within_the_device_mtu() {
        let mut path = PathMtu::new(OuterFamily::Ipv4, 1420, None);
        assert_eq!((path.path_mtu, path.inner_mtu), (1448, 1420));
        assert!(path.set(1400));
        assert_eq!(path.inner_mtu, 1372);
        assert!(!path.set(1400), "no change");
        path.set(9000);
        assert_eq!(path.inner_mtu, 1420, "never above the device MTU");
        path.set(40);
        assert_eq!(path.inner_mtu, 68, "never below what IPv4 needs");
        let v6 = PathMtu::new(OuterFamily::Ipv6, 1420, Some(1500));
        assert_eq!(v6.inner_mtu, 1420);
        assert_eq!(
            PathMtu::new(OuterFamily::Ipv6, 1500, Some(1280)).inner_mtu,
            1232
        );
    }
}
