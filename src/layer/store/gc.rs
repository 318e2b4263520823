//! Cache size control: listing, eviction by least recent use, pruning.
