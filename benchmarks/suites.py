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
    batch: int = 100


FULL = Sizes(
    rounds=5,
    rabbit_n=800,
    rabbit_latency_n=500,
    rabbit_latency_rate=500.0,
    sqs_n=150,
    memory_n=20_000,
    memory_peer_n=2_000,
    memory_latency_n=2_000,
    memory_latency_rate=1_000.0,
    sqlite_n=3_000,
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


def _adapted_note(specs: list[ContenderSpec]) -> str:
    asyncio_spec = next(spec for spec in specs if spec.key == ASYNCIO_KEY)
    return (
        f"{asyncio_spec.label}: AsyncMessageDispatcher with an async handler; the backend has "
        "no asyncio-native twin here, so the dispatcher adapts the blocking one (as_async) "
        "and the messages are published from a thread as for the threaded row."
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
            "handler on AsyncRabbitMQBackend, published with AsyncQueuePublisher on the same "
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
            "AsyncLocalSQSBackend, published with AsyncQueuePublisher on the same event loop; "
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
            _adapted_note(specs),
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
            _adapted_note(specs),
        ],
    )


def redis_streams_suite(sizes: Sizes) -> Suite:
    """Melange's Redis Streams backend and raw redis-py on the local Redis."""
    module = "benchmarks.contenders.redis_streams"
    specs = [
        ContenderSpec("melange", f"{module}:MelangeRedisStreams", "Melange", {}, melange=True),
        ContenderSpec("redis", f"{module}:RawRedisStreams", "raw redis-py", {}),
    ]
    everyone = [spec.key for spec in specs]
    specs = _with_asyncio_worker(specs, "bench-redis-async", label="asyncio, redis.asyncio")
    specs = _with_linearity_worker(specs, "bench-redis-4n")
    n = sizes.rabbit_n
    return Suite(
        "redis-streams",
        "Redis Streams",
        specs,
        [
            Measurement(
                "publish",
                "publish, one by one (msg/s)",
                _ops([*everyone, ASYNCIO_KEY], "publish", n=n),
            ),
            Measurement(
                "consume", "consume (msg/s)", _ops([*everyone, ASYNCIO_KEY], "consume", n=n)
            ),
            Measurement("e2e", "end to end (msg/s)", _ops([*everyone, ASYNCIO_KEY], "e2e", n=n)),
            _linearity(n),
        ],
        [
            "Both: one XADD round trip per publish; reads through a consumer group, 10 "
            "messages at a time, blocking when the stream is empty; each message acknowledged "
            "and its entry deleted (XACK and XDEL) after its handler ran. Melange also writes "
            "a lease per delivery and checks that each settlement's delivery still holds its "
            "message (one Lua script per operation).",
            "Melange (asyncio, redis.asyncio): AsyncMessageDispatcher with an async handler on "
            "AsyncRedisStreamsBackend, published with AsyncQueuePublisher on the same loop.",
        ],
    )


def nats_suite(sizes: Sizes) -> Suite:
    """Melange's NATS JetStream backend and raw nats-py on the local NATS server."""
    module = "benchmarks.contenders.nats"
    specs = [
        ContenderSpec("melange", f"{module}:MelangeNATS", "Melange", {}, melange=True),
        ContenderSpec("nats", f"{module}:RawNATS", "raw nats-py", {}),
    ]
    everyone = [spec.key for spec in specs]
    specs = _with_asyncio_worker(specs, "bench-nats-async", label="asyncio, nats-py")
    specs = _with_linearity_worker(specs, "bench-nats-4n")
    n = sizes.rabbit_n
    return Suite(
        "nats",
        "NATS JetStream",
        specs,
        [
            Measurement(
                "publish",
                "publish, one by one (msg/s)",
                _ops([*everyone, ASYNCIO_KEY], "publish", n=n),
            ),
            Measurement(
                "consume", "consume (msg/s)", _ops([*everyone, ASYNCIO_KEY], "consume", n=n)
            ),
            Measurement("e2e", "end to end (msg/s)", _ops([*everyone, ASYNCIO_KEY], "e2e", n=n)),
            _linearity(n),
        ],
        [
            "Both: each publish waits for JetStream's acknowledgement from a work-queue stream "
            "on file storage; one durable pull consumer read 10 messages at a time; each "
            "message acknowledged after its handler ran. Raw nats-py runs on one event loop "
            "(its end to end publishes from a task beside the consumer); Melange's threaded "
            "dispatcher hands each call to the event loop of its nats-py client.",
            "Melange (asyncio, nats-py): AsyncMessageDispatcher with an async handler on "
            "AsyncNATSBackend, published with AsyncQueuePublisher on the same loop.",
        ],
    )


def kafka_suite(sizes: Sizes) -> Suite:
    """Melange's Kafka backend and raw confluent-kafka, each on a tansu broker of its own."""
    module = "benchmarks.contenders.kafka"
    specs = [
        ContenderSpec("melange", f"{module}:MelangeKafka", "Melange", {}, melange=True),
        ContenderSpec("confluent", f"{module}:RawKafka", "raw confluent-kafka", {}),
    ]
    everyone = [spec.key for spec in specs]
    specs = _with_asyncio_worker(specs, "bench-kafka-async", label="asyncio, aiokafka")
    specs = _with_linearity_worker(specs, "bench-kafka-4n")
    n = sizes.rabbit_n
    return Suite(
        "kafka",
        "Kafka (tansu)",
        specs,
        [
            Measurement(
                "publish",
                "publish, one by one (msg/s)",
                _ops([*everyone, ASYNCIO_KEY], "publish", n=n),
            ),
            Measurement(
                "consume", "consume (msg/s)", _ops([*everyone, ASYNCIO_KEY], "consume", n=n)
            ),
            Measurement("e2e", "end to end (msg/s)", _ops([*everyone, ASYNCIO_KEY], "e2e", n=n)),
            _linearity(n),
        ],
        [
            "Both: an idempotent producer (acks=all) that waits for each message to be written "
            "(a flush per publish); a consumer group read 10 records at a time; each message's "
            "offset committed (asynchronously) after its handler ran. Melange commits the end "
            "of the contiguous prefix of settled records and adds its envelope headers.",
            "Each contender's process runs a tansu broker of its own (in-memory storage): "
            "there is no Apache Kafka on the benchmark machines. Each sends a few messages "
            "end to end before the measurements, so that its consumer has joined its group.",
            "Melange (asyncio, aiokafka): AsyncMessageDispatcher with an async handler on "
            "AsyncKafkaBackend, published with AsyncQueuePublisher on the same loop; its "
            "producer is not idempotent on tansu, which cannot start aiokafka's.",
        ],
    )


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
    Target("kafka", "e2e", 0.9, "confluent", text="Kafka end to end >= 0.9x raw confluent-kafka"),
    Target("nats", "e2e", 0.9, "nats", text="NATS JetStream end to end >= 0.9x raw nats-py"),
    Target(
        "redis-streams", "e2e", 0.9, "redis", text="Redis Streams end to end >= 0.9x raw redis-py"
    ),
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
            ("kafka", "Kafka"),
        ]
    ],
]
