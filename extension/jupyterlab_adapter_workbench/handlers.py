"""The server extension's REST routes: thin authenticated handlers over `hub_api`, one error mapper."""

from __future__ import annotations

import json

import tornado
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado.ioloop import IOLoop

from workbench.hub import HubUnavailableError, InvalidRepoIdError

from . import hub_api

NAMESPACE = "adapter-workbench"
NOT_FOUND = (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError)


class _HubHandler(APIHandler):
    """Runs one `hub_api` call off the event loop (the hub is blocking HTTP) and answers JSON."""

    call = staticmethod(hub_api.search)

    @tornado.web.authenticated
    async def get(self):
        args = {key: [v.decode("utf-8", "replace") for v in values] for key, values in self.request.arguments.items()}
        try:
            answer = await IOLoop.current().run_in_executor(None, self.call, args)
        except (hub_api.BadQuery, InvalidRepoIdError) as err:  # the id passed the pattern, not the Hub's rules
            return self._error(400, str(err))
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
    call = staticmethod(hub_api.search)


class InfoHandler(_HubHandler):
    call = staticmethod(hub_api.info)


def _is_not_found(err: Exception) -> bool:
    response = getattr(err, "response", None)
    return isinstance(err, NOT_FOUND) or getattr(response, "status_code", None) == 404


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def setup_handlers(web_app) -> None:
    base = url_path_join(web_app.settings["base_url"], NAMESPACE)
    web_app.add_handlers(
        ".*$",
        [(url_path_join(base, "search"), SearchHandler), (url_path_join(base, "info"), InfoHandler)],
    )
