//! A connection limit per remote IP address: libp2p's `connection_limits` counts totals,
//! per peer and pending, but one host with many keys is many peers. Inbound connections from
//! an address that already holds `max` established ones are denied before the handshake.
//! IPv6 addresses count by their /64 network. Loopback is exempt (in-process meshes and local
//! tools). Vehicles behind one carrier NAT
//! share an address, so `max` is not small (16 by default).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    dummy, ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Why a connection was denied.
#[derive(Debug, thiserror::Error)]
#[error("{ip} already holds {max} connections")]
pub(crate) struct TooManyFromIp {
    ip: IpAddr,
    max: usize,
}

/// The behaviour (no protocol of its own; it only answers the swarm's questions).
pub(crate) struct Behaviour {
    max: usize,
    established: HashMap<IpAddr, usize>,
    by_connection: HashMap<ConnectionId, Vec<IpAddr>>,
}

/// What an inbound connection counts against, with the bound: its IPv4 address; or its
/// IPv6 address and, four times as large, its /64 network (a host is often handed a whole
/// /64, so counting single IPv6 addresses alone limits nothing, while a depot LAN's
/// vehicles share one /64).
fn buckets(addr: &Multiaddr, max: usize) -> Vec<(IpAddr, usize)> {
    let Some(ip) = addr.iter().find_map(|p| match p {
        Protocol::Ip4(a) => Some(IpAddr::V4(a)),
        Protocol::Ip6(a) => Some(IpAddr::V6(a)),
        _ => None,
    }) else {
        return Vec::new();
    };
    match ip {
        _ if ip.is_loopback() => Vec::new(),
        IpAddr::V4(_) => vec![(ip, max)],
        IpAddr::V6(a) => {
            let net = u128::from(a) & !((1u128 << 64) - 1);
            let net = IpAddr::V6(net.into());
            if net == ip {
                vec![(ip, max.saturating_mul(4))]
            } else {
                vec![(ip, max), (net, max.saturating_mul(4))]
            }
        }
    }
}

impl Behaviour {
    pub(crate) fn new(max: usize) -> Self {
        Self { max: max.max(1), established: HashMap::new(), by_connection: HashMap::new() }
    }

    fn check(&self, remote: &Multiaddr) -> Result<(), ConnectionDenied> {
        for (ip, max) in buckets(remote, self.max) {
            if self.established.get(&ip).copied().unwrap_or(0) >= max {
                return Err(ConnectionDenied::new(TooManyFromIp { ip, max }));
            }
        }
        Ok(())
    }

    fn add(&mut self, id: ConnectionId, remote: &Multiaddr) {
        let keys: Vec<IpAddr> = buckets(remote, self.max).into_iter().map(|(ip, _)| ip).collect();
        for ip in &keys {
            let n = self.established.entry(*ip).or_default();
            *n = n.saturating_add(1);
        }
        if !keys.is_empty() {
            self.by_connection.insert(id, keys);
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.check(remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(remote)?;
        self.add(id, remote);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // Our own dials are neither limited nor counted: dialling the vehicles of a depot LAN
        // must not shut that LAN out of connecting to us.
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) = event {
            for ip in self.by_connection.remove(&connection_id).unwrap_or_default() {
                if let Some(n) = self.established.get_mut(&ip) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.established.remove(&ip);
                    }
                }
            }
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_once_it_holds_the_maximum_and_loopback_never() {
        let mut b = Behaviour::new(2);
        let far: Multiaddr = "/ip4/198.51.100.7/tcp/4001".parse().unwrap();
        let other: Multiaddr = "/ip4/198.51.100.8/tcp/4001".parse().unwrap();
        let local: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let ids: Vec<ConnectionId> = (0..4).map(|_| ConnectionId::new_unchecked(rand_id())).collect();
        b.add(ids[0], &far);
        b.add(ids[1], &far);
        assert!(b.check(&far).is_err());
        assert!(b.check(&other).is_ok());
        for _ in 0..10 {
            b.add(ConnectionId::new_unchecked(rand_id()), &local);
        }
        assert!(b.check(&local).is_ok());
        b.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id: PeerId::random(),
            connection_id: ids[0],
            endpoint: &libp2p::core::ConnectedPoint::Listener {
                local_addr: far.clone(),
                send_back_addr: far.clone(),
            },
            cause: None,
            remaining_established: 0,
        }));
        assert!(b.check(&far).is_ok(), "a closed connection frees its place");
    }

    #[test]
    fn ipv6_counts_per_address_and_per_64_network() {
        let mut b = Behaviour::new(2);
        let a: Multiaddr = "/ip6/2001:db8:1:2::1/tcp/4001".parse().unwrap();
        b.add(ConnectionId::new_unchecked(rand_id()), &a);
        b.add(ConnectionId::new_unchecked(rand_id()), &a);
        assert!(b.check(&a).is_err(), "one address: the per-address bound");
        // Other hosts of the same /64 share a bound four times as large.
        for i in 2..8u16 {
            let other: Multiaddr = format!("/ip6/2001:db8:1:2::{i:x}/tcp/4001").parse().unwrap();
            assert!(b.check(&other).is_ok(), "{other}");
            b.add(ConnectionId::new_unchecked(rand_id()), &other);
        }
        assert!(b.check(&"/ip6/2001:db8:1:2::77/tcp/1".parse().unwrap()).is_err(), "the /64 is full");
        assert!(b.check(&"/ip6/2001:db8:1:3::1/tcp/4001".parse().unwrap()).is_ok(), "another /64");
        assert!(b.check(&"/ip6/::1/tcp/1".parse().unwrap()).is_ok());
    }

    fn rand_id() -> usize {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(1_000_000);
        N.fetch_add(1, Ordering::Relaxed)
    }
}
