"""The server extension's REST routes: thin authenticated handlers over `hub_api`, one error mapper."""

from __future__ import annotations

import json

import tornado
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from workbench.hub import HubUnavailableError, InvalidRepoIdError

from . import hub_api
from .pool import CallTimedOut, HubPool, PoolFull

NAMESPACE = "adapter-workbench"
NOT_FOUND = (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError)
POOL_SETTING = "adapter_workbench_hub_pool"  # the extension app's `HubPool`, in the server's tornado settings


class _HubHandler(APIHandler):
    """Runs one `hub_api` call on the extension's bounded pool (the hub is blocking HTTP) and answers JSON."""

    parse = staticmethod(hub_api.parse_search)
    call = staticmethod(hub_api.search)
    route = "search"

    @tornado.web.authenticated
    async def get(self):
        args = {key: [v.decode("utf-8", "replace") for v in values] for key, values in self.request.arguments.items()}
        try:  # checked here, before the pool: a bad query is a 400 even when the pool is full
            query = self.parse(args)
        except (hub_api.BadQuery, InvalidRepoIdError) as err:  # the id passed the pattern, not the Hub's rules
            return self._error(400, str(err))
        try:
            pool: HubPool = self.settings[POOL_SETTING]
            answer = await pool.run(f"adapter-workbench/{self.route}", self.call, query)
        except InvalidRepoIdError as err:  # checked above; kept so that one slipping through is still a 400
            return self._error(400, str(err))
        except PoolFull as err:
            self.set_header("Retry-After", "5")
            return self._error(503, str(err))
        except CallTimedOut as err:
            return self._error(504, str(err))
        except HubUnavailableError as err:
            return self._error(502, str(err))
        except (OSError, ValueError) as err:  # not found, network failures, malformed answers from the Hub
            if _is_not_found(err):
                return self._error(404, f"not on the Hub: {_first_line(err)}")
            self.log.warning("adapter-workbench hub call failed: %s", err)
            return self._error(502, f"the Hub could not answer: {_first_line(err)}")
        self.finish(json.dumps(answer))

    def _error(self, status: int, message: str) -> None:
        self.set_status(status)
        self.finish(json.dumps({"error": message, "status": status}))


class SearchHandler(_HubHandler):
    pass


class InfoHandler(_HubHandler):
    parse = staticmethod(hub_api.parse_info)
    call = staticmethod(hub_api.info)
    route = "info"


def _is_not_found(err: Exception) -> bool:
    response = getattr(err, "response", None)
    return isinstance(err, NOT_FOUND) or getattr(response, "status_code", None) == 404


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


ROUTES = [(url_path_join(NAMESPACE, "search"), SearchHandler), (url_path_join(NAMESPACE, "info"), InfoHandler)]
