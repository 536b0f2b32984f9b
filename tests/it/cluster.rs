//! The agent and the swarm (issue 4): deploys to agents on 127.0.0.1, status, resume, ensure, desired state.
