//! A Merkle tree over a list of digests, so that one signed root commits to many items and
//! each item is checked alone with its path (log2 n digests).
//!
//! Why here and not a crate: the tree is the one of RFC 6962 (Certificate Transparency)
//! section 2.1: a list of n leaves splits at the largest power of two below n, so no leaf is
//! duplicated to fill a level (the flaw that let two lists share a root in Bitcoin's tree,
//! CVE-2012-2459), and a leaf is hashed under another tag than an inner node, so no inner
//! node passes for a leaf. The crates that exist either duplicate the last leaf or hash
//! leaves and nodes alike, and fitting one meant as much code as this. The hash is blake3
//! with tags of our own ("fleetmesh/merkle/…"), as everything else signed here.
//!
//! A leaf is a digest the caller computed (of one input, or of one output): the tree never
//! sees the items themselves.

use crate::Digest;

const LEAF: &[u8] = b"fleetmesh/merkle/leaf\0";
const NODE: &[u8] = b"fleetmesh/merkle/node\0";

fn leaf_hash(d: &Digest) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(LEAF);
    h.update(d.as_bytes());
    *h.finalize().as_bytes()
}

fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(NODE);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn split(n: usize) -> usize {
    let mut k: usize = 1;
    while k.saturating_mul(2) < n {
        k = k.saturating_mul(2);
    }
    k
}

fn subtree(leaves: &[Digest]) -> [u8; 32] {
    match leaves {
        [] => *blake3::hash(NODE).as_bytes(),
        [one] => leaf_hash(one),
        _ => {
            let (l, r) = leaves.split_at(split(leaves.len()));
            node_hash(&subtree(l), &subtree(r))
        }
    }
}

/// The root over `leaves`, in order. An empty list has a root too (a fixed value), so the
/// function is total; callers refuse empty batches before they get here.
pub fn root(leaves: &[Digest]) -> Digest {
    Digest::from_bytes(subtree(leaves))
}

/// The path of leaf `index`: the sibling digests from the leaf up to the root. `None` when
/// `index` is not a leaf. For every leaf's path, [`paths`] costs far less than n calls.
pub fn path(leaves: &[Digest], index: usize) -> Option<Vec<Digest>> {
    if index >= leaves.len() {
        return None;
    }
    paths(leaves).into_iter().nth(index)
}

/// Every leaf's path, in leaf order, hashing each node of the tree once (O(n log n) in all,
/// where n calls of [`path`] would hash the tree n times).
pub fn paths(leaves: &[Digest]) -> Vec<Vec<Digest>> {
    all_paths(leaves).1
}

// The subtree's hash and each of its leaves' paths within it (the sibling nearest the leaf
// first; the caller appends the siblings above).
fn all_paths(leaves: &[Digest]) -> ([u8; 32], Vec<Vec<Digest>>) {
    match leaves {
        [] => (subtree(leaves), Vec::new()),
        [one] => (leaf_hash(one), vec![Vec::new()]),
        _ => {
            let (l, r) = leaves.split_at(split(leaves.len()));
            let ((lh, mut lp), (rh, mut rp)) = (all_paths(l), all_paths(r));
            lp.iter_mut().for_each(|p| p.push(Digest::from_bytes(rh)));
            rp.iter_mut().for_each(|p| p.push(Digest::from_bytes(lh)));
            lp.append(&mut rp);
            (node_hash(&lh, &rh), lp)
        }
    }
}

/// Whether `leaf` is item `index` of `n` under `root`, by its `path` (as [`path`] makes it).
pub fn verify(leaf: &Digest, index: usize, n: usize, path: &[Digest], root: &Digest) -> bool {
    match fold(leaf_hash(leaf), index, n, path) {
        Some((hash, [])) => hash == *root.as_bytes(),
        _ => false,
    }
}

// Rebuilds the subtree hash of `n` leaves holding `index` from the end of `path` (the
// siblings nearest the root come last); returns it and the part of the path not used.
fn fold(leaf: [u8; 32], index: usize, n: usize, path: &[Digest]) -> Option<([u8; 32], &[Digest])> {
    if index >= n {
        return None;
    }
    if n == 1 {
        return Some((leaf, path));
    }
    let (sibling, rest) = path.split_last()?;
    let k = split(n);
    if index < k {
        let (hash, rest) = fold(leaf, index, k, rest)?;
        Some((node_hash(&hash, sibling.as_bytes()), rest))
    } else {
        let (hash, rest) = fold(leaf, index.saturating_sub(k), n.saturating_sub(k), rest)?;
        Some((node_hash(sibling.as_bytes(), &hash), rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Digest> {
        (0..n).map(|i| Digest::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes())).collect()
    }

    #[test]
    fn every_leaf_checks_against_the_root_with_its_path_and_nothing_else_does() {
        for n in 1..=40 {
            let ls = leaves(n);
            let r = root(&ls);
            let all = paths(&ls);
            assert_eq!(all.len(), n);
            for (i, leaf) in ls.iter().enumerate() {
                let p = path(&ls, i).unwrap();
                assert_eq!(p, all[i], "one path or all, the same");
                assert!(p.len() <= 6, "a path of {} for {n} leaves", p.len());
                assert!(verify(leaf, i, n, &p, &r), "leaf {i} of {n}");
                // Any other index, any other leaf, a shorter or longer path: no. (The count is
                // not in the path: it comes from the signed spec.)
                for j in (0..n).filter(|j| *j != i) {
                    assert!(!verify(leaf, j, n, &p, &r), "leaf {i} of {n} at index {j}");
                    assert!(!verify(&ls[j], i, n, &p, &r), "leaf {j} at {i} of {n}");
                }
                if let Some((_, shorter)) = p.split_last() {
                    assert!(!verify(leaf, i, n, shorter, &r));
                }
                let mut longer = p.clone();
                longer.push(r);
                assert!(!verify(leaf, i, n, &longer, &r));
            }
            assert!(path(&ls, n).is_none());
            assert!(!verify(&ls[0], n, n, &[], &r));
        }
    }

    #[test]
    fn the_root_depends_on_every_leaf_its_order_and_the_count() {
        let ls = leaves(7);
        let r = root(&ls);
        for i in 0..7 {
            let mut changed = ls.clone();
            changed[i] = Digest::from_bytes([0xAA; 32]);
            assert_ne!(root(&changed), r, "leaf {i}");
        }
        let mut swapped = ls.clone();
        swapped.swap(2, 5);
        assert_ne!(root(&swapped), r);
        // No padding: a list with its last leaf repeated has another root.
        let mut padded = ls.clone();
        padded.push(ls[6]);
        assert_ne!(root(&padded), r);
        // A leaf is not an inner node: the root of two leaves is not a leaf's hash of anything.
        let two = leaves(2);
        assert_ne!(root(&two), root(&[root(&two)]));
        assert_ne!(root(&leaves(1)), leaves(1)[0]);
    }
}
