use super::*;

#[test]
fn announcements_gather_briefly_while_a_fetch_starts() {
    // 50 subscribers: 0.3 s while less than a fifth of the chunks is fetched, 1.1 s from then on.
    assert_eq!(have_gather(50, 0, 1000), Duration::from_millis(300));
    assert_eq!(have_gather(50, 199, 1000), Duration::from_millis(300));
    assert_eq!(have_gather(50, 200, 1000), Duration::from_millis(1100));
    assert_eq!(have_gather(50, 1000, 1000), Duration::from_millis(1100));
    // The wait stops growing at 50 subscribers.
    assert_eq!(have_gather(500, 900, 1000), Duration::from_millis(1100));
    assert_eq!(have_gather(500, 0, 1000), Duration::from_millis(300));
    // Nothing to fetch (the node had every chunk): the usual wait.
    assert_eq!(have_gather(5, 0, 0), Duration::from_millis(200));
    // Counts near the integer limit do not overflow.
    assert_eq!(have_gather(5, u64::MAX, u64::MAX), Duration::from_millis(200));
}
