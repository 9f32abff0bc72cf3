//! `Cluster.Members`: this node and every peer origin it knows, with their
//! sync state, as the gRPC API, the admin endpoint and the console show them.

use bus_sync::{PeerState, PeerView, SyncShared};
use registry_proto::v1;

use crate::config::NodeConfig;
use crate::registry::Registry;

fn member_state(p: &PeerView) -> v1::MemberState {
    let leaving = p.beat.as_ref().is_some_and(|b| b.leaving);
    match p.state {
        _ if p.left => v1::MemberState::Left,
        PeerState::Live | PeerState::Suspect if leaving => v1::MemberState::Leaving,
        PeerState::Live => v1::MemberState::Live,
        PeerState::Suspect => v1::MemberState::Suspect,
        PeerState::Orphaned => v1::MemberState::Orphaned,
    }
}

/// This node followed by every peer origin it knows: what `Cluster.Members`
/// answers and `/admin/members` shows. A standalone node is a cluster of one.
pub fn members(registry: &Registry, ready: bool) -> v1::MembersResponse {
    let stats = registry.own_stats();
    let config = registry.config();
    let me = v1::Member {
        node_id: registry.node_id().to_string(),
        incarnation: registry.incarnation(),
        state: v1::MemberState::Local as i32,
        advertise_addr: advertise_addr(config),
        last_beat_age_ms: 0,
        origin_seq: stats.seq,
        applied_seq: stats.seq,
        record_count: stats.live,
        digest_match: true,
        ready,
    };
    let mut members = vec![me];
    if let Some(sync) = registry.sync_state() {
        members.extend(peer_members(registry, sync));
    }
    v1::MembersResponse { members, cluster: config.cluster.clone() }
}

/// The address peers and operators are told to reach this node at.
pub fn advertise_addr(config: &NodeConfig) -> String {
    config.sync.advertise_addr.clone().unwrap_or_else(|| config.grpc_addr.to_string())
}

/// Every peer origin this node knows, as `Cluster.Members` reports them.
pub fn peer_members(registry: &Registry, sync: &SyncShared) -> Vec<v1::Member> {
    // Copy the list out first: `copy_stats` takes the registry's write lock, and
    // the writer takes the peers lock (for freshness) while holding it.
    let peers = sync.peers.lock().clone();
    peers
        .iter()
        .map(|p| {
            let beat = p.beat.clone().unwrap_or_default();
            let (digest, entries) = registry.copy_stats(&p.origin);
            v1::Member {
                node_id: p.origin.node.to_string(),
                incarnation: p.origin.incarnation,
                state: member_state(p) as i32,
                advertise_addr: beat.advertise_addr.clone(),
                last_beat_age_ms: p.last_heard_age_ms,
                origin_seq: beat.seq,
                applied_seq: p.applied,
                record_count: beat.live,
                digest_match: p.beat.is_some()
                    && p.applied == beat.seq
                    && (digest, entries) == (beat.digest, beat.entries),
                ready: beat.ready,
            }
        })
        .collect()
}
