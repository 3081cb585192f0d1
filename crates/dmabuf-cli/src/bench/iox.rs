//! The iceoryx2 case: publish-subscribe of `[u8]` samples loaned from
//! iceoryx2's shared memory, with an event per sample to wake the
//! subscriber (id 0: a sample, id 1: the end).

use std::time::Duration;

use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::prelude::*;

use super::cases::{check_stamped, fill_stamped, now_ns, ready, BenchReport, Lat};
use super::BoxResult;
use crate::stream::Limit;

const END: usize = 1;

type Data = iceoryx2::service::port_factory::publish_subscribe::PortFactory<ipc::Service, [u8], ()>;
type Events = iceoryx2::service::port_factory::event::PortFactory<ipc::Service>;

fn services(name: &str, size: u64) -> BoxResult<(Node<ipc::Service>, Data, Events)> {
    set_log_level(LogLevel::Error);
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let ps = node
        .service_builder(&format!("{name}/data").as_str().try_into()?)
        .publish_subscribe::<[u8]>()
        .subscriber_max_buffer_size(4)
        .history_size(0)
        .enable_safe_overflow(false)
        .max_publishers(1)
        .max_subscribers(1)
        .open_or_create()?;
    let ev = node
        .service_builder(&format!("{name}/event").as_str().try_into()?)
        .event()
        .open_or_create()?;
    let _ = size;
    Ok((node, ps, ev))
}

pub struct Producer {
    _node: Node<ipc::Service>,
    publisher: Publisher<ipc::Service, [u8], ()>,
    notifier: Notifier<ipc::Service>,
}

impl Producer {
    pub fn new(name: &str, size: u64) -> BoxResult<Producer> {
        let (node, ps, ev) = services(name, size)?;
        let publisher = ps
            .publisher_builder()
            .initial_max_slice_len(size as usize)
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()?;
        let notifier = ev.notifier_builder().create()?;
        Ok(Producer {
            _node: node,
            publisher,
            notifier,
        })
    }

    pub fn run(&self, size: u64, limit: Limit, gap: Option<Duration>) -> BoxResult<(u64, u64)> {
        let start_ns = now_ns();
        let mut stop = crate::stream::Stop::new(limit);
        let mut n = 0u64;
        while !stop.done(n) {
            n += 1;
            // `loan_slice` hands out a zeroed sample (iceoryx2 has no
            // safe way to an uninitialised one other than an element-wise
            // closure, which measured slower); then every byte is written.
            let mut sample = self.publisher.loan_slice(size as usize)?;
            fill_stamped(sample.payload_mut(), n);
            sample.send()?;
            self.notifier.notify()?;
            if let Some(g) = gap {
                std::thread::sleep(g);
            }
        }
        self.notifier
            .notify_with_custom_event_id(EventId::new(END))?;
        Ok((start_ns, n))
    }
}

pub fn consume(name: &str, size: u64) -> BoxResult<BenchReport> {
    let (_node, ps, ev) = services(name, size)?;
    let subscriber = ps.subscriber_builder().create()?;
    let listener: Listener<ipc::Service> = ev.listener_builder().create()?;
    ready()?;
    let mut rep = BenchReport::default();
    let mut lat = Lat::new()?;
    let mut end = false;
    loop {
        listener.timed_wait(
            |a| {
                if a.id.as_value() == END {
                    end = true
                }
            },
            Duration::from_secs(30),
        )?;
        while let Some(sample) = subscriber.receive()? {
            let arrived = now_ns();
            let p = sample.payload();
            if p.len() as u64 != size {
                return Err(format!("sample of {} bytes, expected {size}", p.len()).into());
            }
            let sent = check_stamped(p, rep.items + 1)?;
            if rep.items >= super::cases::WARM_UP {
                lat.record(arrived.saturating_sub(sent));
            }
            rep.items += 1;
            rep.bytes += size;
        }
        if end {
            rep.end_ns = now_ns();
            rep.latency = Some(lat.summary());
            return Ok(rep);
        }
    }
}
