//! Union–find over indices: the merge groups of the view and the persons of linking are
//! both "everything connected to everything else", built from pairwise links.

/// The root of `i`'s group, halving the path on the way.
pub(crate) fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// Joins the groups of `a` and `b`. The smaller index becomes the root, so the grouping
/// does not depend on the order links are added in.
pub(crate) fn union(parent: &mut [usize], a: usize, b: usize) {
    let ra = find(parent, a);
    let rb = find(parent, b);
    if ra != rb {
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        parent[hi] = lo;
    }
}
