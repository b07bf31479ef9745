"""Strategy search: the space and its analytic screen (`space`), the search
itself (`run`: `run_search(...) -> SearchResult`, `search(...) -> DataFrame`)
and its typed result with `summary`, `why` and `plan_of` (`result`)."""

from sim.search.result import SearchCounts, SearchResult, plan_of, summary, to_records, why
from sim.search.run import pareto_front, run_search, search, usd_per_million_tokens
from sim.search.space import SEARCHED, base_plan

__all__ = ["SEARCHED", "SearchCounts", "SearchResult", "base_plan", "pareto_front", "plan_of",
           "run_search", "search", "summary", "to_records", "usd_per_million_tokens", "why"]
