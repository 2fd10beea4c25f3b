"""What is measured: the suites, their contenders, sizes and the targets Melange must meet."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.runner import ContenderSpec, Measurement

#: RabbitMQ settings every contender shares: Melange's defaults.
RABBIT_PREFETCH = 20
RABBIT_QUEUE_TYPE = "quorum"


@dataclass(frozen=True)
class Sizes:
    """How many rounds and messages a run uses."""

    rounds: int
    rabbit_n: int
    rabbit_latency_n: int
    rabbit_latency_rate: float
    sqs_n: int
    memory_n: int
    memory_peer_n: int
    memory_latency_n: int
    memory_latency_rate: float
    sqlite_n: int
    #: Messages per Kafka round: more than on the other brokers, because tansu answers a
    #: fetch late (see the findings) and each round's tail moves its total less this way.
    kafka_n: int
    #: Messages per round on Redis Streams, NATS and Kombu: they move thousands of messages a
    #: second, and a round of a fraction of a second is at the mercy of the machine's other
    #: work for its whole length.
    stream_n: int
    batch: int = 100


FULL = Sizes(
    rounds=5,
    rabbit_n=800,
    rabbit_latency_n=500,
    rabbit_latency_rate=500.0,
    sqs_n=150,
    memory_n=50_000,
    memory_peer_n=2_000,
    memory_latency_n=2_000,
    memory_latency_rate=1_000.0,
    sqlite_n=6_000,
    kafka_n=2_400,
    stream_n=3_000,
)

QUICK = Sizes(
    rounds=3,
    rabbit_n=300,
    rabbit_latency_n=200,
    rabbit_latency_rate=500.0,
    sqs_n=30,
    memory_n=5_000,
    memory_peer_n=300,
    memory_latency_n=300,
    memory_latency_rate=1_000.0,
    sqlite_n=500,
    kafka_n=300,
    stream_n=300,
)


@dataclass(frozen=True)
class Target:
    """A goal: a median ratio of Melange to a contender, or a median throughput.

    Attributes:
        suite: The suite.
        measurement: The measurement whose throughputs are compared.
        threshold: The least acceptable median (ratio, or messages per second).
        contender: The contender Melange is divided by; ``None`` for an absolute throughput.
        numerator: The contender divided, when it is not Melange's main worker (e.g. the
            asyncio dispatcher compared with the threaded one).
        linearity: A band ``threshold .. 2 - threshold`` on the ratio of throughput at 4N to
            throughput at N (``measurement`` holds N, ``measurement + "_4n"`` holds 4N).
        metric: With ``contender=None``, the statistic judged instead of the throughput of
            ``numerator`` (or Melange's main worker): e.g. ``"requests_per_message"``.
        at_most: The median must not exceed ``threshold`` (a cost, not a rate).
    """

    suite: str
    measurement: str
    threshold: float
    contender: str | None = None
    linearity: bool = False
    text: str = ""
    numerator: str | None = None
    metric: str = "throughput"
    at_most: bool = False

    @property
    def unit(self) -> str:
        """How the median is shown."""
        if self.metric == "requests_per_message":
            return " requests/msg"
        return " msg/s" if self.contender is None and not self.linearity else "x"


@dataclass
class Suite:
    """A broker and everything measured on it."""

    name: str
    title: str
    specs: list[ContenderSpec]
    measurements: list[Measurement]
    notes: list[str] = field(default_factory=list)


def _ops(keys: list[str], op: str, **args: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    return {key: (op, dict(args)) for key in keys}


def _linearity(n: int) -> Measurement:
    return Measurement(
        "e2e_4n", f"end to end at 4N = {4 * n}", {LINEARITY_KEY: ("e2e", {"n": 4 * n})}
    )


#: The worker that runs Melange's 4N measurement.
LINEARITY_KEY = "melange_4n"


def _with_linearity_worker(specs: list[ContenderSpec], queue: str) -> list[ContenderSpec]:
    """Add a second Melange worker, on its own queue, for the 4N measurement.

    A separate process keeps the larger run's memory out of the peak memory of the worker
    that is compared with the other contenders (Python rarely gives freed memory back).
    """
    melange = next(spec for spec in specs if spec.melange)
    params = {**melange.params, "queue": queue, "subdir": "melange-4n"}
    extra = ContenderSpec(LINEARITY_KEY, melange.target, f"{melange.label} (4N run)", params)
    return [*specs, extra]


#: The worker that runs Melange's asyncio dispatcher (on the native asyncio backend where
#: there is one).
ASYNCIO_KEY = "melange_async"
#: The worker that runs Melange's asyncio dispatcher on the blocking backend, adapted.
ADAPTED_KEY = "melange_async_adapted"


def _with_asyncio_worker(
    specs: list[ContenderSpec],
    queue: str,
    *,
    key: str = ASYNCIO_KEY,
    driver: str = "asyncio",
    label: str = "asyncio",
) -> list[ContenderSpec]:
    """Add Melange with the asyncio dispatcher, on its own queue, after the Melange rows."""
    melange = next(spec for spec in specs if spec.melange)
    params = {**melange.params, "queue": queue, "subdir": f"melange-{key}", "driver": driver}
    extra = ContenderSpec(key, melange.target, f"{melange.label} ({label})", params)
    ours = {melange.key, ASYNCIO_KEY, ADAPTED_KEY}
    after = max(i for i, spec in enumerate(specs) if spec.key in ours)
    return [*specs[: after + 1], extra, *specs[after + 1 :]]


def _embedded_asyncio_note(specs: list[ContenderSpec]) -> str:
    asyncio_spec = next(spec for spec in specs if spec.key == ASYNCIO_KEY)
    return (
        f"{asyncio_spec.label}: an asyncio service on the embedded backend: an "
        "AsyncMessageDispatcher with an async handler and an AsyncQueuePublisher on one "
        "event loop, both on the blocking backend adapted (as_async), whose calls run on "
        "the loop and whose waiting receives wait there (the threaded row publishes from a "
        "thread beside its consume loop)."
    )


def rabbit_suite(sizes: Sizes) -> Suite:
    """Melange, raw pika, kombu and FastStream on the local RabbitMQ."""
    params = {"prefetch": RABBIT_PREFETCH, "queue_type": RABBIT_QUEUE_TYPE}
    module = "benchmarks.contenders.rabbit"
    specs = [
        ContenderSpec("melange", f"{module}:MelangeRabbit", "Melange", params, melange=True),
        ContenderSpec("pika", f"{module}:RawPika", "raw pika", params),
        ContenderSpec("kombu", f"{module}:Kombu", "kombu", params),
        ContenderSpec("faststream", f"{module}:FastStreamRabbit", "FastStream", params),
    ]
    everyone = [spec.key for spec in specs]
    specs = _with_asyncio_worker(
        specs, "bench.rabbit.melange-async", label="asyncio, pika asyncio adapter"
    )
    specs = _with_asyncio_worker(
        specs,
        "bench.rabbit.melange-async-adapted",
        key=ADAPTED_KEY,
        driver="asyncio-adapted",
        label="asyncio, pika backend adapted",
    )
    specs = _with_linearity_worker(specs, "bench.rabbit.melange-4n")
    asyncio_rows = [ASYNCIO_KEY, ADAPTED_KEY]
    n = sizes.rabbit_n
    return Suite(
        "rabbitmq",
        "RabbitMQ",
        specs,
        [
            Measurement(
                "publish",
                "publish, one by one (msg/s)",
                _ops([*everyone, ASYNCIO_KEY], "publish", n=n),
            ),
            Measurement(
                "consume", "consume (msg/s)", _ops([*everyone, *asyncio_rows], "consume", n=n)
            ),
            Measurement("e2e", "end to end (msg/s)", _ops([*everyone, *asyncio_rows], "e2e", n=n)),
            Measurement(
                "batch_publish",
                f"batch publish, {sizes.batch} per batch (msg/s)",
                _ops(
                    # Raw pika's BlockingChannel waits for each confirm in turn.
                    ["melange", ASYNCIO_KEY, "pika"],
                    "publish_batch",
                    n=n,
                    batch=sizes.batch,
                ),
            ),
            _linearity(n),
            Measurement(
                "latency",
                f"latency at {sizes.rabbit_latency_rate:.0f} msg/s",
                _ops(
                    [*everyone, ASYNCIO_KEY],
                    "e2e",
                    n=sizes.rabbit_latency_n,
                    rate=sizes.rabbit_latency_rate,
                ),
            ),
        ],
        [
            f"Every contender: {RABBIT_QUEUE_TYPE} queue (Melange's default), persistent "
            "mandatory messages, publisher confirms (a single publish returns once confirmed), "
            f"prefetch {RABBIT_PREFETCH} (Melange's default), every message acknowledged after "
            "its handler ran (Melange acknowledges what one receive returned together).",
            "Batch publish: Melange pipelines the confirms of a batch; raw pika's "
            "BlockingChannel publishes and waits for each confirm.",
            "Melange (asyncio, pika asyncio adapter): AsyncMessageDispatcher with an async "
            "handler on AsyncRabbitMQBackend, published with AsyncQueuePublisher "
            "through the same backend on the same "
            "event loop (as FastStream does). The backend runs on pika's AsyncioConnection: "
            "the loop reads the socket and pika's frame callbacks resolve futures, with no task "
            "per delivery (on aiormq, which creates one, consuming took about three times the "
            "CPU per message). Melange (asyncio, pika backend adapted): the same "
            "dispatcher on the blocking RabbitMQBackend (as_async), published from a thread "
            "as for the threaded row.",
        ],
    )


def sqs_suite(sizes: Sizes, port: int, legacy_python: str | None) -> Suite:
    """Melange, raw boto3 and melange 7.2.0 on a moto server."""
    params = {"port": port}
    module = "benchmarks.contenders.sqs"
    specs = [
        ContenderSpec("melange", f"{module}:MelangeSQS", "Melange", params, melange=True),
        ContenderSpec("boto3", f"{module}:RawBoto3", "raw boto3", params),
    ]
    if legacy_python is not None:
        specs.append(
            ContenderSpec(
                "melange72",
                "benchmarks.contenders.legacy72:Melange72SQS",
                "melange 7.2.0",
                params,
                python=legacy_python,
            )
        )
    everyone = [spec.key for spec in specs]
    specs = _with_asyncio_worker(specs, "bench-sqs-melange-async", label="asyncio, aiobotocore")
    specs = _with_linearity_worker(specs, "bench-sqs-melange-4n")
    n = sizes.sqs_n
    ours = ["melange", ASYNCIO_KEY]
    return Suite(
        "sqs",
        "SQS (moto server)",
        specs,
        [
            Measurement(
                "publish",
                "publish, one by one (msg/s)",
                _ops([*everyone, ASYNCIO_KEY], "publish", n=n),
            ),
            Measurement(
                "batch_publish",
                "batch publish, 10 per request (msg/s)",
                # 7.2.0 has no batch publish: its QueuePublisher sends one by one.
                _ops([*ours, "boto3", "melange72"], "publish_batch", n=n, batch=sizes.batch),
            ),
            Measurement(
                "consume", "consume (msg/s)", _ops([*everyone, ASYNCIO_KEY], "consume", n=n)
            ),
            Measurement("e2e", "end to end (msg/s)", _ops([*everyone, ASYNCIO_KEY], "e2e", n=n)),
            _linearity(n),
        ],
        [
            "Same calls for Melange and raw boto3: SendMessage / SendMessageBatch (10 per "
            "request) with the 7.2.0 wire format, ReceiveMessage of 10 with long polling, one "
            "DeleteMessageBatch per receive. melange 7.2.0 has no batch publish and deletes "
            "messages one by one, as released.",
            f"Queues stay shallow ({n} messages at most) because moto slows down with depth.",
            "Melange (asyncio, aiobotocore): AsyncMessageDispatcher with an async handler on "
            "AsyncLocalSQSBackend, published with AsyncQueuePublisher "
            "through the same backend on the same event loop; "
            "the same requests as the threaded row.",
        ],
    )


def memory_suite(sizes: Sizes) -> Suite:
    """Melange's in-memory broker and FastStream's test broker."""
    module = "benchmarks.contenders.memory"
    specs = [
        ContenderSpec("melange", f"{module}:MelangeMemory", "Melange in-memory", melange=True),
        ContenderSpec(
            "faststream_test", f"{module}:FastStreamTestBroker", "FastStream TestRabbitBroker"
        ),
        ContenderSpec("python_floor", f"{module}:PythonFloor", "bare Python (queue.Queue + json)"),
    ]
    specs = _with_asyncio_worker(specs, "bench-memory-async")
    specs = _with_linearity_worker(specs, "bench-memory-4n")
    n = sizes.memory_n
    return Suite(
        "memory",
        "In-memory",
        specs,
        [
            Measurement("publish", "publish (msg/s)", {"melange": ("publish", {"n": n})}),
            Measurement(
                "consume", "consume (msg/s)", _ops(["melange", ASYNCIO_KEY], "consume", n=n)
            ),
            Measurement(
                "e2e",
                "end to end (msg/s)",
                {
                    "melange": ("e2e", {"n": n}),
                    ASYNCIO_KEY: ("e2e", {"n": n}),
                    "faststream_test": ("e2e", {"n": sizes.memory_peer_n}),
                    "python_floor": ("e2e", {"n": n}),
                },
            ),
            _linearity(n),
            Measurement(
                "latency",
                f"latency at {sizes.memory_latency_rate:.0f} msg/s",
                {
                    "melange": (
                        "e2e",
                        {"n": sizes.memory_latency_n, "rate": sizes.memory_latency_rate},
                    )
                },
            ),
        ],
        [
            "Melange: a publisher thread and the dispatcher's consume loop on one "
            "InMemoryMessagingBackend (JSON encode, enqueue, receive, decode, route, handler, "
            "ack).",
            _embedded_asyncio_note(specs),
            f"FastStream's TestRabbitBroker calls the subscriber inside each publish; it runs "
            f"{sizes.memory_peer_n} messages per round (it is much slower, and its memory grows "
            "with the count), compared per message.",
            "bare Python: a publisher thread putting (uuid4 hex, headers, json.dumps(payload)) on "
            "a queue.Queue and the consumer loop taking them off with json.loads, no library: "
            "what the machine allows any in-process broker in CPython, so the ratio to it is the "
            "cost of everything Melange does per message.",
        ],
    )


def sqlite_suite(sizes: Sizes, directory: str) -> Suite:
    """Melange's SQLiteBackend and persist-queue's SQLiteAckQueue."""
    module = "benchmarks.contenders.sqlite"
    params = {"dir": directory}
    specs = [
        ContenderSpec("melange", f"{module}:MelangeSQLite", "Melange SQLite", params, melange=True),
        ContenderSpec("persistqueue", f"{module}:PersistQueue", "persist-queue", params),
    ]
    everyone = [spec.key for spec in specs]
    specs = _with_asyncio_worker(specs, "bench-sqlite-async")
    specs = _with_linearity_worker(specs, "bench-sqlite-4n")
    n = sizes.sqlite_n
    return Suite(
        "sqlite",
        "SQLite (embedded)",
        specs,
        [
            Measurement("publish", "publish, one by one (msg/s)", _ops(everyone, "publish", n=n)),
            Measurement(
                "consume", "consume (msg/s)", _ops([*everyone, ASYNCIO_KEY], "consume", n=n)
            ),
            Measurement("e2e", "end to end (msg/s)", _ops([*everyone, ASYNCIO_KEY], "e2e", n=n)),
            _linearity(n),
        ],
        [
            "Both: one database file in WAL mode with synchronous=NORMAL, a commit per publish "
            "and per acknowledgement, a publisher thread and a consumer in one process.",
            _embedded_asyncio_note(specs),
        ],
    )


#: Where the FastStream contenders of the scale-out brokers live.
FASTSTREAM_MODULE = "benchmarks.contenders.faststream_brokers"
#: FastStream's row on every broker that has one.
FASTSTREAM_KEY = "faststream"


@dataclass(frozen=True)
class Broker:
    """What sets one scale-out broker's suite apart from the others'.

    Attributes:
        suite: The suite's name.
        title: Its heading in the report.
        module: The module of its Melange and raw contenders.
        melange: The Melange contender's class.
        raw: The raw client's key, class and label.
        faststream: FastStream's contender class in :data:`FASTSTREAM_MODULE`, if any.
        queues: Starts the queue name of each extra Melange worker.
        asyncio_label: What the asyncio row runs on.
        notes: How the contenders compare, for the report.
        raw_threads: For an asyncio-only raw client, its key, class and label when driven
            from a publisher thread and a consumer thread, as Melange's threaded row is.
        sized_by: The field of :class:`Sizes` that holds its messages per round.
    """

    suite: str
    title: str
    module: str
    melange: str
    raw: tuple[str, str, str]
    faststream: str | None
    queues: str
    asyncio_label: str
    notes: tuple[str, ...]
    raw_threads: tuple[str, str, str] | None = None
    sized_by: str = "rabbit_n"


def broker_suite(broker: Broker, sizes: Sizes) -> Suite:
    """Melange (threaded and asyncio), the raw client and FastStream on one broker: publish,
    consume, end to end and the 4N run; FastStream takes part end to end."""
    raw_key, raw_class, raw_label = broker.raw
    specs = [
        ContenderSpec("melange", f"{broker.module}:{broker.melange}", "Melange", melange=True),
        ContenderSpec(raw_key, f"{broker.module}:{raw_class}", raw_label),
    ]
    if broker.raw_threads is not None:
        key, cls, label = broker.raw_threads
        specs.append(ContenderSpec(key, f"{broker.module}:{cls}", label))
    everyone = [spec.key for spec in specs]
    peers = []
    if broker.faststream is not None:
        target = f"{FASTSTREAM_MODULE}:{broker.faststream}"
        specs.append(ContenderSpec(FASTSTREAM_KEY, target, "FastStream"))
        peers.append(FASTSTREAM_KEY)
    specs = _with_asyncio_worker(
        specs, f"{broker.queues}-async", label=f"asyncio, {broker.asyncio_label}"
    )
    specs = _with_linearity_worker(specs, f"{broker.queues}-4n")
    n = int(getattr(sizes, broker.sized_by))
    ours = [*everyone, ASYNCIO_KEY]
    return Suite(
        broker.suite,
        broker.title,
        specs,
        [
            Measurement("publish", "publish, one by one (msg/s)", _ops(ours, "publish", n=n)),
            Measurement("consume", "consume (msg/s)", _ops(ours, "consume", n=n)),
            Measurement("e2e", "end to end (msg/s)", _ops([*ours, *peers], "e2e", n=n)),
            _linearity(n),
        ],
        list(broker.notes),
    )


_FASTSTREAM_NOTE = (
    "FastStream: its broker's publish and a subscriber with FastStream's default "
    "acknowledgement (after the handler returned), an async handler, publisher and subscriber "
    "on one event loop; it takes part end to end only."
)

BROKERS = [
    Broker(
        "redis-streams",
        "Redis Streams",
        "benchmarks.contenders.redis_streams",
        "MelangeRedisStreams",
        ("redis", "RawRedisStreams", "raw redis-py"),
        "FastStreamRedisStreams",
        "bench-redis",
        "redis.asyncio",
        (
            "Both: one XADD round trip per publish; reads through a consumer group, 10 "
            "messages at a time, blocking when the stream is empty; each message acknowledged "
            "and its entry deleted (XACK and XDEL) after its handler ran. Melange also writes "
            "a lease per delivery and checks that each settlement's delivery still holds its "
            "message (one Lua script per operation).",
            "Melange (asyncio, redis.asyncio): AsyncMessageDispatcher with an async handler on "
            "AsyncRedisStreamsBackend, published with AsyncQueuePublisher "
            "through the same backend on the same loop.",
            _FASTSTREAM_NOTE + " On Redis: XADD per publish, a StreamSub consumer group read "
            "10 at a time, XACK per message without XDEL (less work than the others).",
        ),
        sized_by="stream_n",
    ),
    Broker(
        "nats",
        "NATS JetStream",
        "benchmarks.contenders.nats",
        "MelangeNATS",
        ("nats", "RawNATS", "raw nats-py"),
        "FastStreamNATS",
        "bench-nats",
        "nats-py",
        (
            "Both: each publish waits for JetStream's acknowledgement from a work-queue stream "
            "on file storage; one durable pull consumer read 10 messages at a time; each "
            "message acknowledged after its handler ran. Raw nats-py runs on one event loop "
            "(its end to end publishes from a task beside the consumer), the setting of "
            "Melange's asyncio row; raw nats-py (two threads) runs as a threaded application "
            "would run it, an event loop and a connection per thread, the setting of "
            "Melange's threaded row, whose calls run on the calling thread over a connection "
            "it drives for the time of the call.",
            "Melange (asyncio, nats-py): AsyncMessageDispatcher with an async handler on "
            "AsyncNATSBackend, published with AsyncQueuePublisher "
            "through the same backend on the same loop.",
            _FASTSTREAM_NOTE + " On NATS: publish(stream=...) waits for the PubAck; a "
            "durable pull subscriber fetching 10 at a time; +ACK per message.",
        ),
        raw_threads=("nats-threads", "RawNATSThreads", "raw nats-py (two threads)"),
        sized_by="stream_n",
    ),
    Broker(
        "kafka",
        "Kafka (tansu)",
        "benchmarks.contenders.kafka",
        "MelangeKafka",
        ("confluent", "RawKafka", "raw confluent-kafka"),
        "FastStreamKafka",
        "bench-kafka",
        "aiokafka",
        (
            "Both: an idempotent producer (acks=all) that waits for each message to be written "
            "(a flush per publish); a consumer group read 10 records at a time; each message's "
            "offset committed (asynchronously) after its handler ran. Melange commits the end "
            "of the contiguous prefix of settled records and adds its envelope headers.",
            "Each contender's process runs a tansu broker of its own (in-memory storage): "
            "there is no Apache Kafka on the benchmark machines. Each sends a few messages "
            "end to end before the measurements, so that its consumer has joined its group.",
            "Melange (asyncio, aiokafka): AsyncMessageDispatcher with an async handler on "
            "AsyncKafkaBackend, published with AsyncQueuePublisher "
            "through the same backend on the same loop; its "
            "producer is not idempotent on tansu, which cannot start aiokafka's.",
            _FASTSTREAM_NOTE + " On Kafka: KafkaBroker (aiokafka, acks=all, not idempotent "
            "on tansu as for Melange's asyncio row); publish waits for the write; a consumer "
            "group read up to 10 records at a time; an offset commit (a round trip) after "
            "each handler.",
        ),
        sized_by="kafka_n",
    ),
]


_KOMBU_NOTE = (
    "Both: kombu Producer.publish of a persistent message to a durable queue, one at a time; "
    "each message acknowledged after its handler ran. Raw kombu consumes as a kombu user "
    "writes it: a Consumer with a prefetch count of 10 and connection.drain_events."
)

#: Melange's kombu backend against raw kombu, on kombu's Redis and AMQP transports (no
#: FastStream row: FastStream has no kombu broker).
KOMBU_BROKERS = [
    Broker(
        "kombu-redis",
        "Kombu (Redis transport)",
        "benchmarks.contenders.kombu",
        "MelangeKombuRedis",
        ("kombu", "RawKombuRedis", "raw kombu (Redis)"),
        None,
        "bench-kombu-redis",
        "kombu on a thread pool",
        (
            _KOMBU_NOTE + " On Redis both keep kombu's visibility timeout (30 s) and a key "
            "prefix of their own. Melange receives through one Lua script per message (taken "
            "off the list and recorded as unacknowledged at once, where kombu needs two round "
            "trips) and writes a lease with each delivery.",
            "Melange (asyncio): AsyncMessageDispatcher with an async handler on "
            "AsyncKombuBackend (the blocking backend on a thread pool of its own).",
        ),
        sized_by="stream_n",
    ),
    Broker(
        "kombu-amqp",
        "Kombu (AMQP transport)",
        "benchmarks.contenders.kombu",
        "MelangeKombuAMQP",
        ("kombu", "RawKombuAMQP", "raw kombu (AMQP)"),
        None,
        "bench-kombu-amqp",
        "kombu: AMQP I/O on the loop",
        (
            _KOMBU_NOTE + " On AMQP (RabbitMQ, classic durable queue) with publisher "
            "confirms (kombu's confirm_publish): a publish returns once the broker has the "
            "message.",
            "Melange (asyncio): AsyncMessageDispatcher with an async handler on "
            "AsyncKombuBackend: receives, acknowledgements and publishes (confirms awaited) "
            "on the event loop; the rest on a thread pool of its own.",
        ),
        sized_by="stream_n",
    ),
]


def kombu_suite(name: str, sizes: Sizes) -> Suite:
    """Melange's kombu backend and raw kombu on one kombu transport (``kombu-redis`` or
    ``kombu-amqp``)."""
    return broker_suite(next(b for b in KOMBU_BROKERS if b.suite == name), sizes)


def redis_streams_suite(sizes: Sizes) -> Suite:
    """Melange's Redis Streams backend, raw redis-py and FastStream on the local Redis."""
    return broker_suite(BROKERS[0], sizes)


def nats_suite(sizes: Sizes) -> Suite:
    """Melange's NATS JetStream backend, raw nats-py and FastStream on the local NATS."""
    return broker_suite(BROKERS[1], sizes)


def kafka_suite(sizes: Sizes) -> Suite:
    """Melange's Kafka backend, raw confluent-kafka and FastStream, each on a tansu broker
    of its own."""
    return broker_suite(BROKERS[2], sizes)


TARGETS = [
    *[
        Target(
            suite,
            "e2e",
            1.0,
            "melange",
            numerator=ASYNCIO_KEY,
            text=f"{title}: asyncio end to end >= threaded end to end",
        )
        for suite, title in [
            ("rabbitmq", "RabbitMQ"),
            ("sqs", "SQS"),
            ("memory", "in-memory"),
            ("sqlite", "SQLite"),
        ]
    ],
    Target(
        "rabbitmq",
        "e2e",
        1.0,
        "melange",
        numerator=ADAPTED_KEY,
        text="RabbitMQ: asyncio on the adapted pika backend >= threaded (informative)",
    ),
    Target(
        "rabbitmq",
        "e2e",
        1.0,
        "faststream",
        numerator=ASYNCIO_KEY,
        text="RabbitMQ: asyncio end to end >= FastStream",
    ),
    Target("rabbitmq", "e2e", 0.9, "pika", text="RabbitMQ end to end >= 0.9x raw pika"),
    Target("rabbitmq", "e2e", 3.0, "faststream", text="RabbitMQ end to end >= 3x FastStream"),
    Target(
        "rabbitmq",
        "batch_publish",
        2.0,
        "pika",
        text="batch publish (pipelined confirms) >= 2x raw pika publish-and-wait-each",
    ),
    Target("sqs", "e2e", 0.9, "boto3", text="SQS end to end >= 0.9x raw boto3"),
    *[
        Target(
            "sqs",
            measurement,
            limit,
            numerator=key,
            metric="requests_per_message",
            at_most=True,
            text=f"SQS{label}: {what} <= {limit:g} requests per message",
        )
        for key, label in [("melange", ""), (ASYNCIO_KEY, " asyncio")]
        for measurement, limit, what in [
            ("publish", 1.0, "publish"),
            ("batch_publish", 0.1, "batch publish"),
            ("consume", 0.2, "consume"),
        ]
    ],
    Target("sqs", "e2e", 3.0, "melange72", text="SQS end to end >= 3x melange 7.2.0"),
    Target("memory", "e2e", 50_000, text="in-memory end to end >= 50,000 msg/s"),
    Target(
        "memory",
        "e2e",
        0.5,
        "python_floor",
        text="in-memory end to end >= 0.5x bare Python (informative: what the machine allows)",
    ),
    Target(
        "memory",
        "e2e",
        20.0,
        "faststream_test",
        text="in-memory end to end >= 20x FastStream's TestRabbitBroker",
    ),
    Target("sqlite", "e2e", 5_000, text="SQLite end to end >= 5,000 msg/s"),
    *[
        Target(broker.suite, "e2e", 1.0, FASTSTREAM_KEY, numerator=key, text=text)
        for broker in BROKERS
        if broker.faststream is not None
        for key, text in [
            (None, f"{broker.title} end to end >= FastStream"),
            (ASYNCIO_KEY, f"{broker.title}: asyncio end to end >= FastStream"),
        ]
    ],
    Target("kafka", "e2e", 0.9, "confluent", text="Kafka end to end >= 0.9x raw confluent-kafka"),
    # nats-py is asyncio only: each of Melange's drivers against it run the same way.
    Target(
        "nats",
        "e2e",
        0.9,
        "nats-threads",
        text="NATS JetStream end to end >= 0.9x raw nats-py (both on two threads)",
    ),
    Target(
        "nats",
        "e2e",
        0.9,
        "nats",
        numerator=ASYNCIO_KEY,
        text="NATS JetStream: asyncio end to end >= 0.9x raw nats-py (both on one event loop)",
    ),
    Target(
        "redis-streams", "e2e", 0.9, "redis", text="Redis Streams end to end >= 0.9x raw redis-py"
    ),
    *[
        Target(b.suite, "e2e", 0.9, "kombu", text=f"{b.title}: end to end >= 0.9x raw kombu")
        for b in KOMBU_BROKERS
    ],
    Target("sqlite", "e2e", 3.0, "persistqueue", text="SQLite end to end >= 3x persist-queue"),
    *[
        Target(
            suite,
            "e2e",
            0.8,
            linearity=True,
            text=f"{title}: throughput at 4N within 20% of N",
        )
        for suite, title in [
            ("rabbitmq", "RabbitMQ"),
            ("sqs", "SQS"),
            ("memory", "in-memory"),
            ("sqlite", "SQLite"),
            ("redis-streams", "Redis Streams"),
            ("nats", "NATS JetStream"),
            ("kafka", "Kafka"),
            ("kombu-redis", "Kombu (Redis transport)"),
            ("kombu-amqp", "Kombu (AMQP transport)"),
        ]
    ],
]
