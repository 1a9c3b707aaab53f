//! The broker as it is deployed: users, permissions and topic permissions from
//! `messaging::definitions` (generated from the contract), AMQPS with a CA bundle, the AMQP
//! `user_id` checked by RabbitMQ and by the consumers. Against a RabbitMQ node this test
//! process owns (`test_support::BrokerNode`, booted once and shared by these tests; each test
//! imports its own vhost and users and deletes them afterwards).
//!
//! Run with `cargo test -p messaging --test secured` (needs `rabbitmq-server` installed; it is
//! started and stopped here).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::AMQPSoftError;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection};
use messaging::contract;
use messaging::definitions::{self, PasswordHash};
use messaging::events::{OrderPlaced, PaymentSucceeded, SagaEvent, ShipmentScheduled};
use messaging::{
    outbox, AmqpConfig, BrokerEndpoint, CloudEvent, Consumer, ConsumerConfig, Db, Event, Handler,
    HandlerError, Incoming, MessagingError, MessagingMetrics, Relay, Topology, TraceContext,
    Writer,
};
use test_support::BrokerNode;
use tokio_util::sync::CancellationToken;

/// One test's corner of the shared node: a vhost, the seven users with fresh passwords, the
/// topology, all from the definitions.
struct Secured {
    node: &'static BrokerNode,
    vhost: String,
    topology: Topology,
    passwords: HashMap<&'static str, String>,
}

impl Secured {
    fn import() -> Secured {
        let node = BrokerNode::shared();
        eprintln!("test broker node booted in {:?}", node.started_in());
        let id = uuid::Uuid::new_v4().simple().to_string();
        let vhost = format!("secured-{id}");
        let topology = Topology::new(format!("t{}.", &id[..12]));
        let passwords: HashMap<&'static str, String> = contract::SERVICES
            .iter()
            .map(|c| (c.service, uuid::Uuid::new_v4().simple().to_string()))
            .collect();
        let defs = definitions::build(
            &vhost,
            &topology,
            |s| PasswordHash::new(&passwords[s]),
            None,
        );
        node.import_definitions(&defs.to_string())
            .unwrap_or_else(|e| panic!("{e}\n{}", node.log_tail()));
        Secured {
            node,
            vhost,
            topology,
            passwords,
        }
    }

    fn endpoint(&self, service: &str, tls: bool) -> BrokerEndpoint {
        let user = self.topology.user(service);
        let password = &self.passwords[service];
        if tls {
            BrokerEndpoint::url(self.node.amqps_url(&user, password, &self.vhost))
                .with_ca_file(self.node.ca_file())
        } else {
            BrokerEndpoint::url(self.node.amqp_url(&user, password, &self.vhost))
        }
    }

    fn amqp(&self, service: &str, tls: bool) -> AmqpConfig {
        AmqpConfig {
            endpoint: self.endpoint(service, tls),
            topology: self.topology.clone(),
            connection_name: self.topology.user(service),
            subscriptions: contract::SERVICES,
        }
    }

    async fn connect(&self, service: &str) -> Connection {
        self.amqp(service, false)
            .connect("test")
            .await
            .unwrap_or_else(|e| panic!("{service} cannot connect: {e}"))
    }

    fn cleanup(self) {
        self.node.delete_vhost(&self.vhost).unwrap();
        for c in contract::SERVICES {
            self.node
                .delete_user(&self.topology.user(c.service))
                .unwrap();
        }
    }
}

/// What the broker answered: `Ok` or the soft error that closed the channel.
type Answer = Result<(), AMQPSoftError>;

fn refusal(e: &lapin::Error) -> AMQPSoftError {
    messaging::soft_error(e).unwrap_or_else(|| panic!("not an AMQP channel error: {e}"))
}

/// Publishes on a fresh channel with confirms and returns the broker's answer.
async fn publish(
    conn: &Connection,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Answer {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = match ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
    {
        Ok(c) => c,
        Err(e) => return Err(refusal(&e)),
    };
    let answer = match confirm.await {
        Ok(Confirmation::Ack(_)) => Ok(()),
        Ok(other) => panic!("unexpected confirmation {other:?}"),
        Err(e) => Err(refusal(&e)),
    };
    if answer.is_ok() {
        let _ = ch.close(200, "ok".into()).await;
    }
    answer
}

/// Runs one broker operation on a fresh channel and returns the broker's answer.
async fn attempt<F, Fut, T>(conn: &Connection, op: F) -> Answer
where
    F: FnOnce(lapin::Channel) -> Fut,
    Fut: std::future::Future<Output = Result<T, lapin::Error>>,
{
    let ch = conn.create_channel().await.unwrap();
    match op(ch).await {
        Ok(_) => Ok(()),
        Err(e) => Err(refusal(&e)),
    }
}

fn as_user(user: &str) -> BasicProperties {
    BasicProperties::default().with_user_id(user.into())
}

/// Every service, every routing key of the catalogue: the broker accepts exactly the keys the
/// contract says the service produces, and refuses the rest with ACCESS_REFUSED. So a
/// definitions file that drifts from the contract, or a service publishing another's event,
/// fails here against the real broker.
#[tokio::test]
async fn the_broker_lets_each_service_publish_exactly_the_keys_it_owns() {
    let s = Secured::import();
    let exchange = s.topology.exchange();
    for c in contract::SERVICES {
        let conn = s.connect(c.service).await;
        let me = s.topology.user(c.service);
        for key in SagaEvent::KEYS {
            let answer = publish(&conn, &exchange, key, b"{}", as_user(&me)).await;
            let expected = if c.publishes(key) {
                Ok(())
            } else {
                Err(AMQPSoftError::ACCESSREFUSED)
            };
            assert_eq!(answer, expected, "{me} publishing {key}");
        }
        let _ = conn.close(200, "ok".into()).await;
    }
    s.cleanup();
}

/// What a compromised service's credentials can and cannot do at the broker.
#[tokio::test]
async fn a_compromised_service_cannot_impersonate_snoop_or_tamper() {
    let s = Secured::import();
    let t = &s.topology;
    let shipping = s.connect("shipping").await;
    let owned = ShipmentScheduled::KEY;

    // Its own key, claiming to be payment: RabbitMQ checks user_id against the login.
    let answer = publish(
        &shipping,
        &t.exchange(),
        owned,
        b"{}",
        as_user(&t.user("payment")),
    )
    .await;
    assert_eq!(answer, Err(AMQPSoftError::PRECONDITIONFAILED));

    // Anything but the events exchange: the dead-letter exchange, the default exchange
    // (straight into another service's queue).
    for (exchange, key) in [
        (t.dead_letter_exchange(), "orders".to_owned()),
        (String::new(), t.queue("orders")),
    ] {
        let answer = publish(
            &shipping,
            &exchange,
            &key,
            b"{}",
            as_user(&t.user("shipping")),
        )
        .await;
        assert_eq!(
            answer,
            Err(AMQPSoftError::ACCESSREFUSED),
            "publish to {exchange:?}"
        );
    }

    // Reading another service's queue or its dead letters.
    for queue in [t.queue("orders"), t.dead_letter_queue("orders")] {
        let answer = attempt(&shipping, |ch| async move {
            ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
        })
        .await;
        assert_eq!(answer, Err(AMQPSoftError::ACCESSREFUSED));
    }

    // Binding its own queue to every event (to read payment's), declaring a queue, deleting
    // another's queue.
    let (queue, exchange) = (t.queue("shipping"), t.exchange());
    let answer = attempt(&shipping, |ch| async move {
        ch.queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
    })
    .await;
    assert_eq!(answer, Err(AMQPSoftError::ACCESSREFUSED), "bind to #");
    let snoop = format!("{}snoop", t.prefix);
    let answer = attempt(&shipping, |ch| async move {
        ch.queue_declare(
            snoop.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
    })
    .await;
    assert_eq!(answer, Err(AMQPSoftError::ACCESSREFUSED), "declare a queue");
    let orders = t.queue("orders");
    let answer = attempt(&shipping, |ch| async move {
        ch.queue_delete(orders.as_str().into(), QueueDeleteOptions::default())
            .await
    })
    .await;
    assert_eq!(
        answer,
        Err(AMQPSoftError::ACCESSREFUSED),
        "delete orders' queue"
    );

    // What it can do: consume its own queue.
    let own = t.queue("shipping");
    let answer = attempt(&shipping, |ch| async move {
        ch.basic_consume(
            own.as_str().into(),
            "probe".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    })
    .await;
    assert_eq!(answer, Ok(()));

    // The node has no guest account at all.
    let guest = AmqpConfig {
        endpoint: BrokerEndpoint::url(s.node.amqp_url("guest", "guest", &s.vhost)),
        ..s.amqp("shipping", false)
    };
    assert!(
        guest.connect("guest").await.is_err(),
        "guest must not log in"
    );
    let _ = shipping.close(200, "ok".into()).await;
    s.cleanup();
}

/// Records the type of every event the handler was given.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Handler for Recorder {
    type Prepared = ();

    fn apply(&self, _tx: &Writer<'_>, msg: &Incoming, _: ()) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push(msg.event.ty.clone());
        Ok(())
    }
}

/// A log line buffer for `tracing`, to check what the consumer says about a forgery.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn placed(order: &str) -> OrderPlaced {
    OrderPlaced {
        order_id: order.into(),
        user_id: "u-1".into(),
        items: vec![],
        total_cents: 500,
        currency: "EUR".into(),
        payment_token: "tok_visa".into(),
        payment_deadline: None,
    }
}

fn succeeded(order: &str) -> PaymentSucceeded {
    PaymentSucceeded {
        order_id: order.into(),
        user_id: "u-1".into(),
        payment_id: "pay-1".into(),
        amount_cents: 500,
    }
}

async fn dead_letters(conn: &Connection, queue: &str) -> Vec<CloudEvent> {
    let ch = conn.create_channel().await.unwrap();
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(serde_json::from_slice(&m.delivery.data).unwrap());
    }
    out
}

/// The second line of defence: shipping's credentials may publish `shipment.scheduled`, so it
/// sends a `payment.succeeded` under that key (orders would mark the order paid). The orders
/// consumer rejects it to its DLQ, counts and logs it with the claimed and actual producer,
/// while payment's genuine event, published by payment's relay over AMQPS, is handled.
#[tokio::test]
async fn a_forged_event_is_rejected_by_the_consumer_and_genuine_ones_flow() {
    let logs = Logs::default();
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish(),
    );
    let s = Secured::import();
    let t = &s.topology;
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();

    // orders consumes over AMQPS, as deployed.
    let orders_db = Db::open(&dir.path().join("orders.db")).unwrap();
    messaging::migrate(&orders_db).await.unwrap();
    let metrics = MessagingMetrics::default();
    let recorder = Arc::new(Recorder::default());
    let config = ConsumerConfig::new(
        s.amqp("orders", true),
        contract::ORDERS.service,
        contract::ORDERS.consumes,
    );
    let consumer = Consumer::new(
        config,
        orders_db.clone(),
        recorder.clone(),
        None,
        metrics.clone(),
    );
    let attached = consumer.status();
    tokio::spawn(consumer.run(shutdown.clone()));
    eventually("orders' consumer attached", || {
        let up = attached.is_up();
        async move { up }
    })
    .await;

    // The forgeries, from shipping's connection.
    let shipping = s.connect("shipping").await;
    let forged = CloudEvent::new("payment", &succeeded("o-forged")).unwrap();
    let body = serde_json::to_vec(&forged).unwrap();
    let props = || {
        BasicProperties::default()
            .with_message_id(forged.id.as_str().into())
            .with_content_type(messaging::CONTENT_TYPE.into())
    };
    let me = t.user("shipping");
    // Its own key, its own (validated) user_id, another service's event type.
    let answer = publish(
        &shipping,
        &t.exchange(),
        ShipmentScheduled::KEY,
        &body,
        props().with_user_id(me.as_str().into()),
    )
    .await;
    assert_eq!(
        answer,
        Ok(()),
        "the broker lets shipping publish its own key"
    );
    // No user_id at all, so the broker checks nothing.
    let answer = publish(
        &shipping,
        &t.exchange(),
        ShipmentScheduled::KEY,
        &body,
        props(),
    )
    .await;
    assert_eq!(answer, Ok(()));

    // The genuine event, through payment's outbox and relay, over AMQPS.
    let payment_db = Db::open(&dir.path().join("payment.db")).unwrap();
    messaging::migrate(&payment_db).await.unwrap();
    let genuine = payment_db
        .call(|c| {
            let tx = c.transaction()?;
            let ev = Writer::new(&tx, "payment")
                .enqueue(&succeeded("o-genuine"), &TraceContext::default())
                .unwrap();
            tx.commit()?;
            Ok::<_, rusqlite::Error>(ev)
        })
        .await
        .unwrap();
    let (relay, notifier) =
        Relay::new(s.amqp("payment", true), payment_db.clone(), metrics.clone());
    tokio::spawn(relay.run(shutdown.clone()));
    notifier.wake();

    eventually("the genuine event handled", || {
        let seen = recorder.0.lock().unwrap().clone();
        async move { !seen.is_empty() }
    })
    .await;
    let forged_count = || {
        metrics
            .consumed
            .get_or_create(&messaging::ConsumeLabels {
                consumer: "orders".into(),
                outcome: "forged",
            })
            .get()
    };
    eventually("both forgeries counted", || {
        let n = forged_count();
        async move { n == 2 }
    })
    .await;
    assert_eq!(
        *recorder.0.lock().unwrap(),
        ["shop.payment.succeeded.v1"],
        "only the genuine event reached the handler"
    );
    let id = genuine.id.clone();
    assert!(payment_db
        .call(move |c| outbox::sent_at(c, &id))
        .await
        .unwrap()
        .is_some());

    // Both forgeries are in orders' DLQ, which orders may read.
    let orders = s.connect("orders").await;
    let dlq = dead_letters(&orders, &t.dead_letter_queue("orders")).await;
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    assert!(dlq.iter().all(|e| e.id == forged.id));

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("not from the service that owns its type") && l.contains(&me))
        .unwrap_or_else(|| panic!("no forgery log line naming {me}:\n{text}"));
    assert!(line.contains("claimed_source=/shop/payment"), "{line}");
    assert!(line.contains(&format!("actual_publisher={me}")), "{line}");
    assert!(line.contains(&format!("{} published it", me)), "{line}");
    assert!(text.contains("actual_publisher=(none)"), "{text}");

    shutdown.cancel();
    let _ = orders.close(200, "ok".into()).await;
    let _ = shipping.close(200, "ok".into()).await;
    s.cleanup();
}

/// A service whose code enqueues an event it does not own cannot get it out: its relay's
/// publish is refused by the broker, the row is held back in the outbox with the reason, and
/// the service's own events behind it still go out.
#[tokio::test]
async fn a_relay_publishing_another_services_event_is_refused_by_the_broker() {
    let s = Secured::import();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("cart.db")).unwrap();
    messaging::migrate(&db).await.unwrap();
    // cart may publish only order.placed; payment.succeeded is payment's.
    let (forbidden, own) = db
        .call(|c| {
            let tx = c.transaction()?;
            let w = Writer::new(&tx, "cart");
            let forbidden = w
                .enqueue(&succeeded("o-1"), &TraceContext::default())
                .unwrap();
            let own = w.enqueue(&placed("o-2"), &TraceContext::default()).unwrap();
            tx.commit()?;
            Ok::<_, rusqlite::Error>((forbidden, own))
        })
        .await
        .unwrap();
    let metrics = MessagingMetrics::default();
    let (relay, notifier) = Relay::new(s.amqp("cart", true), db.clone(), metrics.clone());
    let shutdown = CancellationToken::new();
    tokio::spawn(relay.run(shutdown.clone()));
    notifier.wake();
    let id = own.id.clone();
    eventually("cart's own event published behind the refused one", || {
        let (db, id) = (db.clone(), id.clone());
        async move {
            db.call(move |c| outbox::sent_at(c, &id))
                .await
                .unwrap()
                .is_some()
        }
    })
    .await;
    let refused = metrics
        .published
        .get_or_create(&messaging::PublishLabels { outcome: "refused" })
        .get();
    assert!(refused >= 1, "counted as refused");
    let id = forbidden.id.clone();
    let (sent, error): (Option<String>, Option<String>) = db
        .call(move |c| {
            c.query_row(
                "SELECT sent_at, last_error FROM outbox WHERE event_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .await
        .unwrap();
    assert_eq!(sent, None, "never published");
    let error = error.unwrap_or_default();
    assert!(
        error.contains("refused") && error.contains("ACCESS_REFUSED"),
        "{error}"
    );

    // orders' queue got cart's order.placed and nothing else.
    let orders = s.connect("orders").await;
    let ch = orders.create_channel().await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = ch
        .basic_get(
            s.topology.queue("orders").as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        got.push(
            serde_json::from_slice::<CloudEvent>(&m.delivery.data)
                .unwrap()
                .ty,
        );
    }
    assert_eq!(got, ["shop.order.placed.v1"]);
    shutdown.cancel();
    s.cleanup();
}

/// AMQPS verifies the broker against the CA bundle and nothing else: a bundle of another CA is
/// a failed handshake, and so is a plaintext client on the TLS port; the right one connects.
#[tokio::test]
async fn amqps_trusts_only_the_configured_ca() {
    let s = Secured::import();
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-ca.crt");
    let somebody_else = identity::dev_ca::DevCa::new("Somebody else").unwrap();
    std::fs::write(&other, somebody_else.bundle_pem()).unwrap();

    let good = s.amqp("orders", true);
    let conn = good.connect("tls").await.unwrap();
    let _ = conn.close(200, "ok".into()).await;

    let mut wrong = s.amqp("orders", true);
    wrong.endpoint = s.endpoint("orders", true).with_ca_file(&other);
    let err = wrong.connect("tls").await.unwrap_err();
    assert!(
        matches!(err, MessagingError::Amqp(_)),
        "a certificate from an untrusted CA must fail the handshake: {err}"
    );
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // amqps:// without a bundle never falls back to the system roots.
    let mut none = s.amqp("orders", true);
    none.endpoint = BrokerEndpoint::url(s.node.amqps_url(
        &s.topology.user("orders"),
        &s.passwords["orders"],
        &s.vhost,
    ));
    assert!(matches!(
        none.connect("tls").await.unwrap_err(),
        MessagingError::Tls(_)
    ));
    s.cleanup();
}

/// The definitions create every queue, so on this broker the services only check them: a
/// vhost where they were not imported is a clear error naming the missing queue, not a
/// permission error from a declaration.
#[tokio::test]
async fn a_service_on_an_unprovisioned_vhost_says_to_import_the_definitions() {
    let s = Secured::import();
    let conn = s.connect("orders").await;
    let other = Topology::new(format!("{}missing.", s.topology.prefix));
    let err = other
        .ensure_consumer(
            &conn,
            "orders",
            contract::ORDERS.consumes,
            messaging::DEFAULT_DELIVERY_LIMIT,
            &s.topology.user("orders"),
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, MessagingError::NotProvisioned { .. }),
        "{text}"
    );
    assert!(text.contains("import the broker definitions"), "{text}");
    // Its own, provisioned queue is fine without any configure permission being used.
    s.topology
        .ensure_consumer(
            &conn,
            "orders",
            contract::ORDERS.consumes,
            messaging::DEFAULT_DELIVERY_LIMIT,
            &s.topology.user("orders"),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "ok".into()).await;
    s.cleanup();
}
