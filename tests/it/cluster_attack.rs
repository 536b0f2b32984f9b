//! Faults and attacks on the agent (issue 4; RELIABILITY cases 17-25, 37, 38, 41, 42): lying and slow peers,
//! foreign certificates, node certificates giving orders, unsigned releases, malformed frames.
