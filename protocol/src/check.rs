//! Judging an object's copies by their digests: which are good, which to repair and from
//! where, or that no majority exists. Shared by `dog vdi check` and the sheep's scrub.

use std::net::SocketAddr;

/// A SHA-1 digest of a whole object (GET_HASH).
pub type Digest = [u8; 20];

/// What to do with one object, from what each replica node holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    Good,
    /// Copy `from`'s object (digest `want`) to each of `to` (with why).
    Repair {
        from: SocketAddr,
        want: Digest,
        to: Vec<(SocketAddr, &'static str)>,
    },
    /// Copies differ and no digest is held by more than half the replicas.
    NoMajority,
    /// No replica holds the object.
    Lost,
}

/// Decides from each replica's digest (`None`: it has no copy). Copies that all agree are
/// the truth, however few; otherwise a digest held by more than half of the replica set.
pub fn plan(held: &[(SocketAddr, Option<Digest>)]) -> Plan {
    let mut counts: Vec<(Digest, usize)> = Vec::new();
    for d in held.iter().filter_map(|(_, d)| *d) {
        match counts.iter_mut().find(|(x, _)| *x == d) {
            Some(c) => c.1 += 1,
            None => counts.push((d, 1)),
        }
    }
    let want = match counts.as_slice() {
        [] => return Plan::Lost,
        [(d, _)] => *d,
        _ => match counts.iter().find(|(_, n)| 2 * n > held.len()) {
            Some((d, _)) => *d,
            None => return Plan::NoMajority,
        },
    };
    let to: Vec<(SocketAddr, &'static str)> = held
        .iter()
        .filter(|(_, d)| *d != Some(want))
        .map(|(a, d)| (*a, if d.is_some() { "differs" } else { "missing" }))
        .collect();
    if to.is_empty() {
        return Plan::Good;
    }
    let from = held.iter().find(|(_, d)| *d == Some(want)).map(|(a, _)| *a);
    match from {
        Some(from) => Plan::Repair { from, want, to },
        None => Plan::Lost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn plans() {
        let (a, b) = ([1u8; 20], [2u8; 20]);
        assert_eq!(
            plan(&[(at(1), Some(a)), (at(2), Some(a)), (at(3), Some(a))]),
            Plan::Good
        );
        assert_eq!(
            plan(&[(at(1), Some(a)), (at(2), None), (at(3), Some(b))]),
            Plan::NoMajority,
            "one each of two digests and a missing copy: no digest has more than half"
        );
        assert_eq!(
            plan(&[(at(1), Some(b)), (at(2), Some(a)), (at(3), Some(a))]),
            Plan::Repair {
                from: at(2),
                want: a,
                to: vec![(at(1), "differs")]
            }
        );
        assert_eq!(
            plan(&[(at(1), None), (at(2), Some(a))]),
            Plan::Repair {
                from: at(2),
                want: a,
                to: vec![(at(1), "missing")]
            },
            "copies that agree are the truth, however few"
        );
        assert_eq!(plan(&[(at(1), Some(a)), (at(2), Some(b))]), Plan::NoMajority);
        assert_eq!(plan(&[(at(1), None), (at(2), None)]), Plan::Lost);
    }
}
