"""README's performance table, written from benchmarks/results.json.

Every figure in the table is one key of the results of one `make bench` run, so the table is
made from the file, not typed: `python -m benchmarks.readme` rewrites the block between the
markers in README.md, and a test checks that the block is what the committed results give.
"""

from __future__ import annotations

import json
import string
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results.json"
START = "<!-- bench-table:start (python -m benchmarks.readme writes it) -->"
END = "<!-- bench-table:end -->"

HEADER = ("Every row below is from one run of `make bench` on {cpu_count} cores (Python {python}, "
          "commit {run_commit}, {run_started_utc} to {run_finished_utc}).")

# (figure, value, baseline in the same run): `{key}` is that key of the results, formatted
ROWS = (
    ("ledger, batched (`transfer_many`)",
     "{ledger_postings_per_s_batched} postings/s",
     "raw sqlite3 writing the same rows: {ledger_raw_sqlite_postings_per_s_batched}/s "
     "(ratio {ledger_vs_raw_sqlite_ratio})"),
    ("ledger, one posting per commit",
     "{ledger_postings_per_s} postings/s",
     "raw sqlite3 running the same statements, WAL and synchronous=FULL on both: "
     "{ledger_raw_sqlite_postings_per_s}/s (ratio {ledger_single_vs_raw_sqlite_ratio})"),
    ("seller usage journal (durable, group commit)",
     "{journal_records_per_s_16_threads} records/s from 16 threads",
     "{journal_records_per_s_1_thread}/s from 1 thread"),
    ("a durable record's CPU per record, {durable_record_callers} callers waiting each for "
     "its own (`benchmarks/durable_record.py`)",
     "usage journal: {durable_record_journal_threads_cpu_us} us from threads, "
     "{durable_record_journal_loop_cpu_us} us from coroutines on one event loop",
     "an fdatasync'd append-only file with group commit: "
     "{durable_record_file_threads_cpu_us} us from threads, "
     "{durable_record_file_loop_cpu_us} us on a loop; each thread fdatasyncing its own: "
     "{durable_record_fsync_each_threads_cpu_us} us; raw sqlite3, batches of 16, nobody "
     "waiting: {durable_record_raw_sqlite_cpu_us} us"),
    ("a paid call's payment work per call, on one event loop without gRPC, "
     "{payment_path_callers} calls at once (`benchmarks/payment_path.py`)",
     "seller {payment_path_seller_us} us, buyer {payment_path_buyer_us} us; with the durable "
     "record: seller {payment_path_seller_recorded_us} us, buyer "
     "{payment_path_buyer_recorded_us} us, the journal's writer thread "
     "{payment_path_writer_us} us",
     "the unpaid call's own work (input, skill, answer, the caller's parse): "
     "{payment_path_unpaid_us} us"),
    ("gRPC alone (`benchmarks/rpc_floor.py`: a bare echo server and 8 clients, each in its "
     "own process), CPU per call of both",
     "{rpc_floor_unary_cpu_us_per_call} us per unary call (server "
     "{rpc_floor_unary_server_cpu_us_per_call}, client {rpc_floor_unary_client_cpu_us_per_call}"
     "); {rpc_floor_stream_cpu_us_per_message} us per message on a bidirectional stream; so a "
     "task's {task_unary_rpcs} RPCs cost {task_rpc_floor_cpu_ms} ms before any work of its own "
     "({task_rpc_floor_tasks_per_s} tasks/s on {cpu_count} cores if that work were free; "
     "{task_rpc_floor_streamed_tasks_per_s} with its 10 calls as messages on one stream)",
     "the same unary call signed and through the node's interceptors: "
     "{rpc_framework_signed_cpu_us_per_call} us (ratio {rpc_framework_signed_vs_bare_ratio})"),
    ("paid call (durable usage record), {paid_call_clients} buyers",
     "{paid_calls_per_s} calls/s",
     "the same call unpaid: {unpaid_calls_per_s}/s (ratio {paid_call_ratio}); unpaid with no "
     "interceptor on either end: {unpaid_no_interceptors_calls_per_s}/s"),
    ("paid call, 4 buyers",
     "{paid_calls_per_s_4_clients} calls/s",
     "unpaid: {unpaid_calls_per_s_4_clients}/s (ratio {paid_call_ratio_4_clients})"),
    ("paid call without the usage journal (what the record costs)",
     "{paid_no_journal_calls_per_s} calls/s",
     "unpaid: {unpaid_calls_per_s}/s (ratio {paid_call_ratio_no_journal})"),
    ("paid call's floor: a paid call's bytes and durable usage record with no payment work "
     "(`benchmarks/_paid_floor.py`), {paid_call_clients} buyers",
     "{paid_floor_calls_per_s} calls/s; CPU per call: seller {paid_floor_server_cpu_us_per_call}"
     " us, buyers {paid_floor_client_cpu_us_per_call} us",
     "unpaid: {unpaid_calls_per_s}/s (ratio {paid_call_ratio_floor}: the most a payment that "
     "does any work per call could keep on this server); the bytes alone, no record: "
     "{paid_floor_no_record_calls_per_s}/s (ratio {paid_call_ratio_floor_no_record}); the "
     "record in a plain file, fdatasync'd by group commit, instead of the journal: "
     "{paid_floor_file_record_calls_per_s}/s (ratio {paid_call_ratio_floor_file_record})"),
    ("seller CPU per call, {paid_call_clients} buyers",
     "{paid_server_cpu_us_per_call} us paid ({paid_no_journal_server_cpu_us_per_call} us "
     "without the journal)",
     "{unpaid_server_cpu_us_per_call} us unpaid; "
     "{unpaid_no_interceptors_server_cpu_us_per_call} us with no interceptor"),
    ("seller thread switches per call, {paid_call_clients} buyers",
     "{paid_server_switches_per_call} paid ({paid_no_journal_server_switches_per_call} without "
     "the journal)",
     "{unpaid_server_switches_per_call} unpaid; one wake-up of a blocked thread costs "
     "{thread_wakeup_cpu_us} us of CPU"),
    ("paid call on the aio seller (`server=\"aio\"`), {paid_call_clients} buyers",
     "{paid_aio_calls_per_s} calls/s; seller CPU {paid_aio_server_cpu_us_per_call} us per call "
     "({paid_aio_no_journal_server_cpu_us_per_call} us without the journal), "
     "{paid_aio_server_switches_per_call} thread switches "
     "({paid_aio_no_journal_server_switches_per_call})",
     "unpaid on grpc.aio, same interceptors: {unpaid_aio_calls_per_s}/s, "
     "{unpaid_aio_server_cpu_us_per_call} us, {unpaid_aio_server_switches_per_call} switches "
     "(ratio {paid_call_ratio_aio}; {paid_call_ratio_aio_no_journal} without the journal)"),
    ("paid call to an async skill on the aio seller (skill and bill on the event loop), "
     "{paid_call_clients} buyers",
     "{paid_aio_async_calls_per_s} calls/s; seller CPU {paid_aio_async_server_cpu_us_per_call} "
     "us per call, {paid_aio_async_server_switches_per_call} thread switches",
     "unpaid on grpc.aio, the skill on its loop: {unpaid_aio_async_calls_per_s}/s, "
     "{unpaid_aio_async_server_cpu_us_per_call} us, "
     "{unpaid_aio_async_server_switches_per_call} switches (ratio {paid_call_ratio_aio_async})"),
    ("paid call's floor on the aio seller (an async echo on the loop, the record awaited), "
     "{paid_call_clients} buyers",
     "{paid_aio_floor_calls_per_s} calls/s; seller CPU {paid_aio_floor_server_cpu_us_per_call} "
     "us per call",
     "unpaid on grpc.aio, the skill on its loop: {unpaid_aio_async_calls_per_s}/s (ratio "
     "{paid_call_ratio_aio_floor}); the bytes alone, no record: "
     "{paid_aio_floor_no_record_calls_per_s}/s (ratio {paid_call_ratio_aio_floor_no_record})"),
    ("paid call to an LLM skill priced per token (litellm offline), {paid_call_clients} buyers",
     "{llm_skill_paid_calls_per_s} calls/s",
     "the same skill unpaid: {llm_skill_unpaid_calls_per_s}/s (ratio "
     "{paid_call_ratio_llm_skill})"),
    ("paid A2A SendMessage (`benchmarks/a2a.py`), {a2a_clients} clients",
     "{a2a_paid_calls_per_s} calls/s",
     "unpaid SendMessage through a2a-sdk's own `DefaultRequestHandler` on grpc.aio: "
     "{a2a_sdk_unpaid_calls_per_s}/s (ratio {a2a_paid_vs_sdk_unpaid_ratio}); our A2A door "
     "unpaid (a free skill): {a2a_own_unpaid_calls_per_s}/s (ratio {a2a_paid_call_ratio})"),
    ("paid HTTP call through the x402 gateway (`benchmarks/x402_gateway.py`), {x402_clients} "
     "clients, sessions of 150 calls",
     "{x402_paid_calls_per_s} calls/s; {x402_ledger_postings_per_100_calls} ledger postings "
     "per 100 calls (one hold and one capture per session); CPU per timed call (each "
     "session's close included): gateway {x402_door_cpu_us_per_call_paid} us, seller "
     "{x402_server_cpu_us_per_call_paid} us, client {x402_client_cpu_us_per_call_paid} us, "
     "of which the closes: {x402_door_cpu_us_per_call_close}, "
     "{x402_server_cpu_us_per_call_close} and {x402_client_cpu_us_per_call_close} us; "
     "opening a session, before the timed calls: gateway "
     "{x402_door_cpu_ms_per_session_open} ms, seller {x402_server_cpu_ms_per_session_open} ms; "
     "on an aio seller {x402_paid_calls_per_s_aio} calls/s",
     "the same call unpaid, same path, through a door of the same shape (the gateway's host "
     "check and security headers included): {x402_unpaid_calls_per_s}/s (ratio "
     "{x402_paid_call_ratio}; CPU per call {x402_door_cpu_us_per_call_unpaid}, "
     "{x402_server_cpu_us_per_call_unpaid} and {x402_client_cpu_us_per_call_unpaid} us); "
     "against an unpaid aio server: {x402_unpaid_calls_per_s_aio}/s (ratio "
     "{x402_paid_call_ratio_aio})"),
    ("x402 call's floor: a session call's headers, body and seller's durable usage record "
     "with no payment work in client, door or seller (`benchmarks/_x402_floor.py`), "
     "{x402_clients} clients",
     "{x402_floor_calls_per_s} calls/s; CPU per call: door {x402_door_cpu_us_per_call_floor} "
     "us, seller {x402_server_cpu_us_per_call_floor} us, client "
     "{x402_client_cpu_us_per_call_floor} us",
     "the unpaid call: {x402_unpaid_calls_per_s}/s (ratio {x402_paid_call_ratio_floor}: what "
     "a paid call would keep were its payment free; rounds vary, so one run's paid median "
     "may come out above it); the floor's bytes "
     "without the durable record: {x402_floor_bytes_calls_per_s}/s (ratio "
     "{x402_paid_call_ratio_floor_bytes}; CPU per call {x402_door_cpu_us_per_call_floor_bytes}, "
     "{x402_server_cpu_us_per_call_floor_bytes} and {x402_client_cpu_us_per_call_floor_bytes} "
     "us); the record written but not waited for: {x402_floor_unwaited_calls_per_s}/s (ratio "
     "{x402_paid_call_ratio_floor_unwaited}; seller {x402_server_cpu_us_per_call_floor_unwaited}"
     " us)"),
    ("discovery over {discover_listings} listings",
     "p99 {discover_p99_ms_100k} ms, p50 {discover_p50_ms_100k} ms (in process)",
     "over gRPC, signed: p99 {discover_grpc_p99_ms} ms, p50 {discover_grpc_p50_ms} ms"),
    ("operator console, agreements page over {console_agreements} agreements (node in its own "
     "process)",
     "server {console_page_server_p50_ms} ms p50, {console_page_server_p99_ms} ms p99; HTTP "
     "{console_page_http_p50_ms} ms p50, {console_page_http_p99_ms} ms p99; {console_browser}",
     "`/healthz` over HTTP (page ratio {console_page_vs_healthz_ratio})"),
    ("first paid call to a fresh LLM seller (`serve()` warms up; `benchmarks/warm_start.py`)",
     "{warm_start_first_call_ms} ms",
     "its tenth call: {warm_start_tenth_call_ms} ms (ratio {warm_start_first_over_tenth}); the "
     "first call of the next agreement with the same, warm seller: "
     "{warm_start_next_agreement_first_call_ms} ms (the seller checks the buyer's escrow proof "
     "instead of asking the marketplace); the same seller not warmed: first call "
     "{cold_start_first_call_ms} ms (ratio {cold_start_first_over_tenth})"),
    ("full tasks, every party its own process (`benchmarks/deployed.py`: `agentmarket serve`, "
     "{deployed_sellers} seller processes, {deployed_buyers} buyers in 2 processes; 1,000 tasks "
     "in steady state; every process under SCHED_BATCH, as `agentmarket serve` runs)",
     "{tasks_per_s_deployed_sqlite} tasks/s (SQLite), {tasks_per_s_deployed_postgres} "
     "(PostgreSQL); CPU per task: node {deployed_sqlite_node_cpu_ms_per_task} ms, sellers "
     "{deployed_sqlite_sellers_cpu_ms_per_task} ms, buyers "
     "{deployed_sqlite_buyers_cpu_ms_per_task} ms (SQLite); the whole machine "
     "{deployed_sqlite_machine_cores_busy} of {cpu_count} cores busy. The buyers as "
     "`AsyncBuyerAgent` tasks (one event loop per buyer process): "
     "{tasks_per_s_deployed_sqlite_async_buyers} tasks/s, buyers "
     "{deployed_sqlite_async_buyers_buyers_cpu_ms_per_task} ms per task",
     "every process under Linux's default policy (`--normal-scheduling`): "
     "{tasks_per_s_deployed_sqlite_normal_scheduling} tasks/s (ratio {scheduling_ratio}), "
     "sellers {deployed_sqlite_normal_scheduling_sellers_cpu_ms_per_task} ms, task p99 "
     "{deployed_sqlite_normal_scheduling_task_p99_ms} ms against {deployed_sqlite_task_p99_ms}; "
     "failed tasks {deployed_failed}, books balanced {deployed_balanced}, agreements left open "
     "{deployed_open}"),
    ("a buyer's escrow while {registry_flood_threads} threads in 2 other processes advertise "
     "6,000-row listings under fresh keys (`benchmarks/registry_flood.py`, SQLite node)",
     "OpenEscrow p50 {registry_flood_hire_p50_ms} ms, p90 {registry_flood_hire_p90_ms} ms, max "
     "{registry_flood_hire_max_ms} ms; finish p50 {registry_flood_finish_p50_ms} ms, p90 "
     "{registry_flood_finish_p90_ms} ms; the node took {registry_flood_listings_taken_per_s} "
     "listings/s and refused {registry_flood_listings_refused_per_s}/s (REGISTRY_BUSY); an "
     "honest live listing's heartbeats: {registry_flood_heartbeats_refused} of "
     "{registry_flood_heartbeats} refused, p50 {registry_flood_heartbeat_p50_ms} ms, max "
     "{registry_flood_heartbeat_max_ms} ms; a seller with standing advertising again once a "
     "second: {registry_flood_standing_relists_refused} of {registry_flood_standing_relists} "
     "refused, p50 {registry_flood_standing_relist_p50_ms} ms",
     "quiet: OpenEscrow p50 {registry_flood_hire_quiet_p50_ms} ms, p90 "
     "{registry_flood_hire_quiet_p90_ms} ms (ratio {registry_flood_hire_p50_vs_quiet_ratio}); "
     "finish p50 {registry_flood_finish_quiet_p50_ms} ms (SECURITY.md)"),
    ("full tasks, 50 concurrent buyers, all in one process (`benchmarks/tasks.py`)",
     "{tasks_per_s_50_buyers} tasks/s (SQLite), {postgres_tasks_per_s} (PostgreSQL)",
     "books balanced: {sqlite_books_balanced} and {postgres_books_balanced}; agreements left "
     "open: {sqlite_open_agreements_left} and {postgres_open_agreements_left}"),
    ("full tasks over 2 nodes sharing PostgreSQL and Redis (`benchmarks/scale_out.py`, every "
     "party its own process)",
     "{tasks_per_s_2_nodes} tasks/s, {scale_out_2_nodes_failed_tasks} failed; node CPU "
     "{scale_out_2_nodes_node_cpu_ms_per_task} ms, PostgreSQL "
     "{scale_out_2_nodes_database_cpu_ms_per_task} ms, Redis "
     "{scale_out_2_nodes_redis_cpu_ms_per_task} ms per task; "
     "{scale_out_2_nodes_lock_wait_share:%} of the database sessions' samples wait on a lock",
     "1 node: {tasks_per_s_1_node} tasks/s (ratio {tasks_2_nodes_vs_1}), "
     "{scale_out_1_node_lock_wait_share:%} waiting on a lock; cores busy "
     "{scale_out_1_node_machine_cores_busy} and {scale_out_2_nodes_machine_cores_busy} of "
     "{cpu_count} (SCALING.md)"),
    ("ledger on PostgreSQL, 16 writers in 4 processes, one posting per commit",
     "{ledger_pg_postings_per_s_16_writers} postings/s (4 writers: "
     "{ledger_pg_postings_per_s_4_writers}/s)",
     "1 writer: {ledger_pg_postings_per_s_1_writers}/s (ratio "
     "{ledger_pg_writer_scaling_16_vs_1}), which keeps {ledger_pg_cores_busy_1_writers} of the "
     "{cpu_count} cores busy; {ledger_pg_lock_wait_share_16_writers:%} of backend samples "
     "waited on a lock (SCALING.md)"),
    ("market sandbox (`benchmarks/sandbox.py`): {sandbox_agents} agents in one process, the "
     "node in a second, {sandbox_tasks} tasks of 1-2 paid calls",
     "{sandbox_tasks_per_s} simulated tasks/s ({sandbox_setup_s} s to start the agents, "
     "{sandbox_run_s} s of rounds)",
     "the same market with the node in the agents' process: "
     "{sandbox_one_process_tasks_per_s} tasks/s (ratio {sandbox_node_process_speedup})"),
)


class Figures(Mapping[str, Any]):
    """The results as the table prints them, with the few figures made of two keys."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results

    def __getitem__(self, key: str) -> Any:
        if key in self.results:
            return self.results[key]
        return _derived(self.results, key)

    def __iter__(self) -> Any:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)


def _derived(r: dict[str, Any], key: str) -> Any:
    if key == "scheduling_ratio":
        return round(r["tasks_per_s_deployed_sqlite"]
                     / r["tasks_per_s_deployed_sqlite_normal_scheduling"], 2)
    if key == "console_browser":
        if r.get("console_page_load_p50_ms") is None:
            return f"Chromium full load not measured ({r.get('console_page_load_note', '')})"
        return (f"Chromium full load {_text(r['console_page_load_p50_ms'])} ms p50, "
                f"{_text(r['console_page_load_p99_ms'])} ms p99")
    runs = ("", "_async_buyers", "_normal_scheduling")
    if key == "deployed_failed":
        return sum(r[f"deployed_sqlite{run}_failed_tasks"] for run in runs)
    if key == "deployed_balanced":
        return all(r[f"deployed_sqlite{run}_books_balanced"] for run in runs)
    if key == "deployed_open":
        return sum(r[f"deployed_sqlite{run}_open_agreements_left"] for run in runs)
    raise KeyError(f"benchmarks/results.json has no {key!r}: run `make bench`")


class _Formatter(string.Formatter):
    """Numbers with thousands separators; `:%` a share as a percentage."""

    def format_field(self, value: Any, spec: str) -> str:
        if spec == "%":
            return f"{value * 100:.1f}%"
        return _text(value) if not spec else format(value, spec)


def _text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,}"


def render(results: dict[str, Any]) -> str:
    """The block README.md holds between the markers."""
    figures, fmt = Figures(results), _Formatter()
    lines = [START, fmt.vformat(HEADER, (), figures), "",
             "| figure | value | baseline in the same run |", "| --- | --- | --- |"]
    for row in ROWS:
        lines.append("| " + " | ".join(fmt.vformat(cell, (), figures) for cell in row) + " |")
    lines.append(END)
    return "\n".join(lines)


def rewritten(readme: str, results: dict[str, Any]) -> str:
    """`readme` with its block replaced by the one `results` gives."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no block between {START!r} and {END!r}")
    return readme[:start] + render(results) + readme[end + len(END):]


def main() -> int:
    results = json.loads(RESULTS.read_text())
    README.write_text(rewritten(README.read_text(), results))
    print(f"{README}: the performance table now shows {RESULTS.name} "
          f"(commit {results.get('run_commit', '?')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
