//! Where a chunk lives: rendezvous (highest-random-weight) hashing over the volume's layout.
//!
//! Each server of the layout gets a weight `blake3(volume id | chunk index | server id)`; the
//! chunk's replicas are the `replicas` servers with the highest weights, best first. There is
//! no per-chunk placement state: every server computes the same answer from the layout alone,
//! and removing a server from a layout moves only the chunks it held.

use strata_types::{ServerId, VolumeId};

/// The servers holding `chunk` of `volume`, best first: `replicas` of `layout` (all of them if
/// the layout is smaller).
pub fn replicas_of(
    volume: VolumeId,
    chunk: u64,
    layout: &[ServerId],
    replicas: usize,
) -> Vec<ServerId> {
    let mut weighted: Vec<(u64, ServerId)> = layout
        .iter()
        .map(|s| (weight(volume, chunk, *s), *s))
        .collect();
    // Ties (never seen in practice with 64-bit weights) break by server id, so the order is total.
    weighted.sort_unstable_by(|a, b| b.cmp(a));
    weighted
        .into_iter()
        .take(replicas)
        .map(|(_, s)| s)
        .collect()
}

fn weight(volume: VolumeId, chunk: u64, server: ServerId) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&volume.to_bytes());
    h.update(&chunk.to_le_bytes());
    h.update(&server.to_bytes());
    let d = h.finalize();
    let mut w = [0u8; 8];
    w.copy_from_slice(&d.as_bytes()[..8]);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn servers(n: usize) -> Vec<ServerId> {
        (0..n).map(|_| ServerId::new_random()).collect()
    }

    #[test]
    fn spreads_chunks_evenly() {
        let layout = servers(3);
        let vol = VolumeId::new_random();
        let mut firsts = [0u32; 3];
        for chunk in 0..3000 {
            let r = replicas_of(vol, chunk, &layout, 2);
            assert_eq!(r.len(), 2);
            assert_ne!(r[0], r[1]);
            let i = layout.iter().position(|s| *s == r[0]).expect("in layout");
            firsts[i] += 1;
        }
        for n in firsts {
            assert!((800..1200).contains(&n), "uneven: {firsts:?}");
        }
    }

    proptest! {
        /// Removing one server from the layout moves only the chunks that it held.
        #[test]
        fn removing_a_server_moves_only_its_chunks(chunk in 0u64..1_000_000, gone in 0usize..4) {
            let layout = servers(4);
            let vol = VolumeId::new_random();
            let before = replicas_of(vol, chunk, &layout, 2);
            let smaller: Vec<_> = layout.iter().copied().filter(|s| *s != layout[gone]).collect();
            let after = replicas_of(vol, chunk, &smaller, 2);
            if !before.contains(&layout[gone]) {
                prop_assert_eq!(before, after);
            } else {
                prop_assert!(after.contains(before.iter().find(|s| **s != layout[gone]).expect("other")));
            }
        }

        /// Every server computes the same answer regardless of the layout's order.
        #[test]
        fn order_of_layout_does_not_matter(chunk in 0u64..1_000_000) {
            let mut layout = servers(5);
            let vol = VolumeId::new_random();
            let a = replicas_of(vol, chunk, &layout, 3);
            layout.reverse();
            prop_assert_eq!(a, replicas_of(vol, chunk, &layout, 3));
        }
    }
}
