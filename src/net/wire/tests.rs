//! Golden vectors and decoder robustness for the wire protocol.

use super::*;

#[test]
fn bitmap_roundtrip() {
    let mut b = Bitmap::new(10);
    assert!(b.set(9));
    assert!(!b.set(9));
    assert!(b.get(9) && !b.get(8) && !b.get(10));
    assert_eq!(Bitmap::from_bytes(b.bytes().to_vec(), 10), Some(b));
}
