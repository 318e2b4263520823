//! Which byte ranges of a sparse blob file hold verified bytes: a set of disjoint ranges, and
//! its on-disk record (`RIMGRS01`, the ranges, a checksum; see `codec::seal`). A damaged or
//! unreadable record reads as empty: the bytes are then fetched again, never trusted.
//! Dependencies: codec (wire helpers).

use crate::layer::codec::{Cursor, put_u64, seal, unseal};

/// Format tag of the record file.
const MAGIC: &[u8; 8] = b"RIMGRS01";

/// Disjoint, sorted, non-touching half-open ranges `[start, end)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet(Vec<(u64, u64)>);

impl RangeSet {
    /// The empty set.
    pub fn new() -> RangeSet {
        RangeSet(Vec::new())
    }

    /// The ranges, in order.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// Adds `[a, b)`, merging with the ranges it touches or overlaps.
    pub fn insert(&mut self, a: u64, b: u64) {
        if a >= b {
            return;
        }
        // First range that ends at or after `a`: everything before it stays.
        let i = self.0.partition_point(|&(_, e)| e < a);
        // Ranges from i that start at or before `b` merge with the new one.
        let j = i + self.0[i..].partition_point(|&(s, _)| s <= b);
        let (mut s, mut e) = (a, b);
        if i < j {
            s = s.min(self.0[i].0);
            e = e.max(self.0[j - 1].1);
        }
        self.0.splice(i..j, [(s, e)]);
    }

    /// Adds every range of `other`.
    pub fn union(&mut self, other: &RangeSet) {
        for &(a, b) in &other.0 {
            self.insert(a, b);
        }
    }

    /// Whether all of `[a, b)` is in the set (an empty range always is).
    pub fn contains(&self, a: u64, b: u64) -> bool {
        if a >= b {
            return true;
        }
        let i = self.0.partition_point(|&(_, e)| e <= a);
        self.0.get(i).is_some_and(|&(s, e)| s <= a && b <= e)
    }

    /// The parts of `[a, b)` not in the set, in order.
    pub fn missing(&self, a: u64, b: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut pos = a;
        let i = self.0.partition_point(|&(_, e)| e <= a);
        for &(s, e) in &self.0[i..] {
            if s >= b {
                break;
            }
            if s > pos {
                out.push((pos, s));
            }
            pos = pos.max(e);
        }
        if pos < b {
            out.push((pos, b));
        }
        out
    }

    /// Total bytes covered.
    pub fn covered(&self) -> u64 {
        self.0.iter().map(|&(s, e)| e - s).sum()
    }

    /// The record file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        put_u64(&mut b, self.0.len() as u64);
        for &(s, e) in &self.0 {
            put_u64(&mut b, s);
            put_u64(&mut b, e);
        }
        seal(b)
    }

    /// Parses a record; `None` if damaged or not a valid set.
    pub fn decode(data: &[u8]) -> Option<RangeSet> {
        let mut r = Cursor {
            data: unseal(MAGIC, data)?,
        };
        let n = r.u64()?;
        let mut v = Vec::with_capacity((n as usize).min(r.data.len() / 16));
        for _ in 0..n {
            v.push((r.u64()?, r.u64()?));
        }
        let valid = r.data.is_empty()
            && v.iter().all(|&(s, e)| s < e)
            && v.windows(2).all(|w| w[0].1 < w[1].0);
        valid.then_some(RangeSet(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_set_insert_table() {
        type Ranges<'a> = &'a [(u64, u64)];
        let cases: &[(Ranges<'_>, Ranges<'_>)] = &[
            (&[(0, 10)], &[(0, 10)]),
            (&[(0, 10), (20, 30)], &[(0, 10), (20, 30)]),
            (&[(20, 30), (0, 10)], &[(0, 10), (20, 30)]),
            // Touching ranges merge, overlapping ones too.
            (&[(0, 10), (10, 20)], &[(0, 20)]),
            (&[(0, 10), (5, 20)], &[(0, 20)]),
            (&[(0, 5), (10, 15), (20, 25), (3, 22)], &[(0, 25)]),
            (&[(10, 20), (12, 15)], &[(10, 20)]),
            (&[(10, 20), (5, 5)], &[(10, 20)]),
        ];
        for (ins, want) in cases {
            let mut s = RangeSet::new();
            for &(a, b) in *ins {
                s.insert(a, b);
            }
            assert_eq!(s.ranges(), *want, "{ins:?}");
        }
    }

    #[test]
    fn range_set_queries() {
        let mut s = RangeSet::new();
        s.insert(10, 20);
        s.insert(30, 40);
        assert!(s.contains(10, 20) && s.contains(12, 13) && s.contains(5, 5));
        assert!(!s.contains(9, 11) && !s.contains(15, 31) && !s.contains(40, 41));
        assert_eq!(s.missing(0, 50), vec![(0, 10), (20, 30), (40, 50)]);
        assert_eq!(s.missing(12, 35), vec![(20, 30)]);
        assert_eq!(s.missing(12, 18), vec![]);
        assert_eq!(s.covered(), 20);
    }

    #[test]
    fn range_record_round_trip_and_damage() {
        let mut s = RangeSet::new();
        s.insert(0, 4096);
        s.insert(1 << 40, (1 << 40) + 1);
        let enc = s.encode();
        assert_eq!(RangeSet::decode(&enc), Some(s));
        for cut in [0, 8, enc.len() - 1] {
            assert_eq!(RangeSet::decode(&enc[..cut]), None);
        }
        let mut flipped = enc.clone();
        flipped[12] ^= 1;
        assert_eq!(RangeSet::decode(&flipped), None);
        // Overlapping ranges in a record with a valid checksum are still refused.
        let mut b = MAGIC.to_vec();
        for v in [2u64, 0, 10, 5, 20] {
            put_u64(&mut b, v);
        }
        assert_eq!(RangeSet::decode(&seal(b)), None);
    }
}
