"""A seeded, deterministic marketplace: machines with GPUs, and the offers (asks) on them.

Prices and host qualities are invented per machine by a seeded RNG, so the same seed always
gives the same marketplace. A machine has 1-8 GPUs; each machine lists one offer per rental size
(1, 2, 4, 8 GPUs) it can hold. GPUs are real slots: renting takes specific GPU indices, and an
offer is rentable only while its machine has that many GPUs free and is online (VAST3 and VAST7
come from exactly this)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from rgt.pricing import HOURS_PER_MONTH

# (name, GPU RAM MB, base $/h per GPU, DLPerf per GPU, cuda_max_good, compute capability)
GPU_MODELS: tuple[tuple[str, int, float, float, float, int], ...] = (
    ("RTX 3090", 24576, 0.20, 21.0, 12.4, 860),
    ("RTX 4090", 24564, 0.35, 38.0, 12.6, 890),
    ("RTX A6000", 49140, 0.45, 32.0, 12.4, 860),
    ("L40S", 46068, 0.80, 52.0, 12.6, 890),
    ("A100 SXM4", 81920, 1.10, 70.0, 12.4, 800),
    ("H100 SXM", 81920, 2.20, 140.0, 12.8, 900),
)
RENTAL_SIZES = (1, 2, 4, 8)
# vast.ai reports `geolocation` as "Region, CC" (e.g. "Texas, US"; the SDK's mock and the docs'
# examples), and search filters on it by country code. Twelve entries, as the earlier bare
# codes were, so a seed keeps its marketplace.
REGIONS = (
    "Texas, US",
    "Quebec, CA",
    "Hesse, DE",
    "North Holland, NL",
    "Ile-de-France, FR",
    "Stockholm, SE",
    "Masovia, PL",
    "Tokyo, JP",
    "Seoul, KR",
    "Taipei, TW",
    "Sao Paulo, BR",
    "New South Wales, AU",
)
# Offers a machine's volume space at this id + machine id (vast.ai lists a volume offer per
# machine; the offer row names it in `avail_vol_ask_id`).
VOLUME_ASK_BASE = 900_000


@dataclass
class Machine:
    """One host machine. `holders[i]` is who holds GPU i (an instance id, or a marker)."""

    id: int
    host_id: int
    gpu_name: str
    gpu_count: int
    gpu_ram: int
    dph_per_gpu: float
    bid_factor: float
    dlperf_per_gpu: float
    cuda_max_good: float
    compute_cap: int
    storage_cost: float  # $/GB-month
    inet_up_cost: float  # $/GB
    inet_down_cost: float  # $/GB
    inet_up: float  # Mb/s
    inet_down: float
    reliability: float
    verified: bool
    direct_port_count: int
    geolocation: str
    cpu_cores: int
    cpu_ram: int  # MB
    disk_space: float  # GB free for containers
    online: bool = True
    datacenter: bool = False  # hosting_type 1 (vast.ai "secure cloud" datacenter hosts)
    holders: dict[int, str] = field(default_factory=dict)

    def free_gpus(self) -> list[int]:
        """GPU indices nobody holds."""
        return [i for i in range(self.gpu_count) if i not in self.holders]


@dataclass(frozen=True)
class Ask:
    """An offer: `num_gpus` GPUs of one machine."""

    id: int
    machine_id: int
    num_gpus: int


def generate(seed: int, machines: int = 60) -> tuple[dict[int, Machine], dict[int, Ask]]:
    """The marketplace for `seed`: machines by id and asks by id."""
    rng = random.Random(seed)
    by_id: dict[int, Machine] = {}
    asks: dict[int, Ask] = {}
    ask_id = 300_000 + rng.randrange(0, 50_000)
    for index in range(machines):
        name, ram, price, dlperf, cuda, cap = rng.choice(GPU_MODELS)
        machine_id = 10_000 + index * 7 + rng.randrange(7)
        count = rng.choice((1, 2, 4, 4, 8, 8))
        verified = rng.random() < 0.8
        reliability = round(rng.uniform(0.97, 0.9995) if verified else rng.uniform(0.85, 0.99), 4)
        machine = Machine(
            id=machine_id,
            host_id=50_000 + rng.randrange(0, 900) * 11,
            gpu_name=name,
            gpu_count=count,
            gpu_ram=ram,
            dph_per_gpu=round(price * rng.uniform(0.75, 1.4), 4),
            bid_factor=round(rng.uniform(0.35, 0.6), 3),
            dlperf_per_gpu=round(dlperf * rng.uniform(0.85, 1.05), 2),
            cuda_max_good=cuda,
            compute_cap=cap,
            storage_cost=round(rng.uniform(0.05, 0.30), 4),
            inet_up_cost=round(rng.choice((0.0, 0.0, rng.uniform(0.001, 0.02))), 5),
            inet_down_cost=round(rng.choice((0.0, 0.0, rng.uniform(0.001, 0.02))), 5),
            inet_up=round(rng.uniform(100, 5000), 1),
            inet_down=round(rng.uniform(100, 5000), 1),
            reliability=reliability,
            verified=verified,
            direct_port_count=0 if rng.random() < 0.15 else rng.choice((4, 16, 64, 200)),
            geolocation=rng.choice(REGIONS),
            cpu_cores=count * rng.choice((8, 16, 32)),
            cpu_ram=count * rng.choice((32, 64, 128)) * 1024,
            disk_space=float(rng.choice((200, 500, 1000, 2000))),
        )
        # A separate RNG: drawing from `rng` here would change every later machine of a seed.
        machine.datacenter = random.Random(seed * 1_000_003 + machine_id).random() < 0.25
        by_id[machine_id] = machine
        for size in RENTAL_SIZES:
            if size <= count:
                ask_id += 1 + rng.randrange(3)
                asks[ask_id] = Ask(ask_id, machine_id, size)
    return by_id, asks


def network_fields(machine: Machine, up_cost: float, down_cost: float) -> dict[str, float]:
    """The API's bandwidth fields of an offer or instance: the machine's link speeds (Mb/s) and
    the bandwidth prices, in $/GB and, as vast.ai also reports them, in $/TB. An instance keeps
    the prices it was rented at, hence the costs as arguments."""
    return {
        "inet_up": machine.inet_up,
        "inet_down": machine.inet_down,
        "inet_up_cost": up_cost,
        "inet_down_cost": down_cost,
        "internet_up_cost_per_tb": round(up_cost * 1000, 4),
        "internet_down_cost_per_tb": round(down_cost * 1000, 4),
    }


def offer_row(ask: Ask, machine: Machine, allocated_storage: float) -> dict[str, Any]:
    """The offer as vast.ai's search returns it (fields the CLI table and SDK read)."""
    n = ask.num_gpus
    dph_base = round(machine.dph_per_gpu * n, 4)
    storage_per_hour = allocated_storage * machine.storage_cost / HOURS_PER_MONTH
    dph_total = dph_base + storage_per_hour
    rentable = machine.online and len(machine.free_gpus()) >= n
    dlperf = round(machine.dlperf_per_gpu * n, 2)
    return {
        "id": ask.id,
        "ask_contract_id": ask.id,
        "bundle_id": ask.id,
        "machine_id": machine.id,
        "host_id": machine.host_id,
        "num_gpus": n,
        "gpu_name": machine.gpu_name,
        "gpu_ram": machine.gpu_ram,
        "gpu_total_ram": machine.gpu_ram * n,
        "gpu_totalram": machine.gpu_ram * n,  # the docs' spelling; gpu_total_ram kept for old reads
        "gpu_frac": n / machine.gpu_count,
        "cuda_max_good": machine.cuda_max_good,
        "compute_cap": machine.compute_cap,
        "driver_version": "560.35.03",
        "cpu_name": "AMD EPYC 7543 32-Core Processor",
        "cpu_cores": machine.cpu_cores,
        "cpu_cores_effective": machine.cpu_cores * n / machine.gpu_count,
        "cpu_ghz": 2.8,
        "cpu_ram": machine.cpu_ram * n // machine.gpu_count,
        "cpu_arch": "amd64",
        "disk_space": machine.disk_space,
        "disk_bw": 2000.0,
        "disk_name": "nvme",
        **network_fields(machine, machine.inet_up_cost, machine.inet_down_cost),
        "direct_port_count": machine.direct_port_count,
        "pci_gen": 4.0,
        "pcie_bw": 24.0,
        "dph_base": dph_base,
        "dph_total": round(dph_total, 6),
        "min_bid": round(dph_base * machine.bid_factor, 4),
        "storage_cost": machine.storage_cost,
        "storage_total_cost": round(storage_per_hour, 6),
        "dlperf": dlperf,
        "dlperf_per_dphtotal": round(dlperf / dph_total, 3) if dph_total else 0.0,
        "total_flops": round(dlperf * 2.1, 2),
        "flops_per_dphtotal": round(dlperf * 2.1 / dph_total, 3) if dph_total else 0.0,
        "score": round(dlperf * machine.reliability / dph_total, 3) if dph_total else 0.0,
        "reliability": machine.reliability,
        "reliability2": machine.reliability,
        "verified": machine.verified,
        "verification": "verified" if machine.verified else "unverified",
        "rentable": rentable,
        "rented": not rentable,
        "is_bid": False,
        "external": False,
        "hosting_type": 1 if machine.datacenter else 0,
        "geolocation": machine.geolocation,
        "static_ip": False,
        "public_ipaddr": "127.0.0.1",
        "duration": 30 * 86400.0,
        "vms_enabled": False,
        "cluster_id": None,
        **volume_offer_fields(machine),
    }


def volume_ask_id(machine: Machine) -> int:
    """The id of the volume offer on `machine` (what `PUT /volumes/` rents)."""
    return VOLUME_ASK_BASE + machine.id


def volume_offer_fields(machine: Machine) -> dict[str, Any]:
    """The offer's volume fields (vastai/data/offer.py: avail_vol_ask_id, avail_vol_dph,
    avail_vol_size). A volume is billed per GB-month at the machine's storage price;
    avail_vol_dph is that price per GB-hour."""
    return {
        "avail_vol_ask_id": volume_ask_id(machine),
        "avail_vol_size": machine.disk_space,
        "avail_vol_dph": round(machine.storage_cost / HOURS_PER_MONTH, 8),
    }
