"""The test server's Sheets v4, exercised through the REAL google-api-python-client stack.

Issue 16 reads a practice's referral log from a Google Sheet (``spreadsheets.values.get``) and
may keep a status tab in it (``batchUpdate`` addSheet, ``values.update``); these tests pin
down what the fake answers, so the reader's tests can rely on it behaving like Google.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any
from urllib.parse import urlsplit

import google_auth_httplib2
import httplib2
import pytest
from google_server import (
    SHEETS_KINDS,
    Formula,
    GoogleServer,
    _check_schema,
    _discovery,
    discovery_method,
    running_server,
)
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest

BOOK = "1AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcd"
HEADER = ["Referral #", "Date received", "Physician", "Client"]
LOG = [
    HEADER,
    ["R-1", "11/3/2026", "Dr. Osei", "A. Client"],
    ["R-2", "11/4/2026", "", "B. Client"],  # a gap in the middle of a row
    ["R-3", "11/5/2026", "Dr. Lund", ""],  # a trailing empty cell
]

# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def module_server() -> Iterator[GoogleServer]:
    with running_server() as server:
        yield server


# One service per test: building one parses the large discovery document (~0.3 s).
_SERVICES: dict[int, Any] = {}


@pytest.fixture
def server(module_server: GoogleServer) -> GoogleServer:
    module_server.reset()
    module_server.put_sheet(BOOK, "Referrals", LOG)
    _SERVICES.clear()
    return module_server


def authorized_http(server: GoogleServer, timeout: float = 5.0) -> Any:
    return google_auth_httplib2.AuthorizedHttp(
        server.credentials(), http=httplib2.Http(timeout=timeout)
    )


def sheets(server: GoogleServer, http: Any = None, endpoint: str | None = None) -> Any:
    """The real client, built from the shipped discovery document, pointed at the server."""
    if http is None and endpoint is None and id(server) in _SERVICES:
        return _SERVICES[id(server)]
    service = build(
        "sheets",
        "v4",
        http=http or authorized_http(server),
        static_discovery=True,
        client_options={"api_endpoint": endpoint or server.sheets_endpoint},
    )
    if http is None and endpoint is None:
        _SERVICES[id(server)] = service
    return service


def values(server: GoogleServer) -> Any:
    return sheets(server).spreadsheets().values()


def get(server: GoogleServer, cells: str, **options: Any) -> dict[str, Any]:
    return values(server).get(spreadsheetId=BOOK, range=cells, **options).execute()


def error_of(caught: pytest.ExceptionInfo[HttpError]) -> dict[str, Any]:
    return json.loads(caught.value.content)["error"]


def no_sleep(request: Any) -> Any:
    """The client sleeps up to 2**n seconds between retries; a test need not."""
    request._sleep = lambda seconds: None
    return request


def raw_request(
    server: GoogleServer, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    http = httplib2.Http(timeout=5)
    headers = {"authorization": "Bearer test-token", "content-type": "application/json"}
    data = None if body is None else json.dumps(body)
    resp, content = http.request(server.base_url + path, method, body=data, headers=headers)
    return resp.status, json.loads(content or b"{}")


# --------------------------------------------------------------------------- addressing


def test_api_endpoint_is_the_base_url_as_for_gmail(server: GoogleServer) -> None:
    """rootUrl https://sheets.googleapis.com/ with servicePath "": base, slash or not."""
    document = _discovery("sheets.v4")
    assert (document["rootUrl"], document["servicePath"]) == ("https://sheets.googleapis.com/", "")
    assert server.sheets_endpoint == server.endpoint("sheets") == server.gmail_endpoint
    for endpoint in (server.base_url, server.base_url + "/"):
        answer = sheets(server, endpoint=endpoint).spreadsheets().values()
        assert answer.get(spreadsheetId=BOOK, range="Referrals!A1").execute()["values"] == [
            ["Referral #"]
        ]
    assert server.requests[-1].path.startswith(f"/v4/spreadsheets/{BOOK}/values/Referrals%21A1?")


# --------------------------------------------------------------------------- values.get


def test_values_get_of_a_whole_tab(server: GoogleServer) -> None:
    answer = get(server, "Referrals")
    assert answer == {
        "range": "Referrals!A1:Z1000",  # the whole requested range, not the data's extent
        "majorDimension": "ROWS",
        "values": [
            HEADER,
            ["R-1", "11/3/2026", "Dr. Osei", "A. Client"],
            ["R-2", "11/4/2026", "", "B. Client"],
            ["R-3", "11/5/2026", "Dr. Lund"],  # trailing empty cells are left out
        ],
    }
    schemas = _discovery("sheets.v4")["schemas"]
    _check_schema(answer, {"$ref": "ValueRange"}, schemas, "answer")


@pytest.mark.parametrize(
    ("cells", "expected_range", "expected"),
    [
        ("Referrals!A1:Z", "Referrals!A1:Z1000", [*LOG[:3], LOG[3][:3]]),
        ("Referrals!A:B", "Referrals!A1:B1000", [row[:2] for row in LOG]),
        (
            "Referrals!C2:D",
            "Referrals!C2:D1000",
            [["Dr. Osei", "A. Client"], ["", "B. Client"], ["Dr. Lund"]],
        ),
        ("Referrals!2:3", "Referrals!A2:Z3", [LOG[1], LOG[2]]),
        ("Referrals!B3", "Referrals!B3", [["11/4/2026"]]),
        ("Referrals!$A$1:$A$2", "Referrals!A1:A2", [["Referral #"], ["R-1"]]),
        ("Referrals!B4:A3", "Referrals!A3:B4", [["R-2", "11/4/2026"], ["R-3", "11/5/2026"]]),
        ("A1:B1", "Referrals!A1:B1", [HEADER[:2]]),  # no tab: the first tab
        ("Referrals!E1:F9", "Referrals!E1:F9", None),  # nothing there: no "values" at all
    ],
)
def test_values_get_of_a_range(
    server: GoogleServer, cells: str, expected_range: str, expected: list[list[str]] | None
) -> None:
    answer = get(server, cells)
    assert answer["range"] == expected_range
    assert answer.get("values") == expected


def test_quoted_tab_titles_and_leading_gaps(server: GoogleServer) -> None:
    server.put_sheet(BOOK, "My Tab", [[], ["", "", "x"], [], ["", "y"]])
    server.put_sheet(BOOK, "It's 2026/27", [["ok"]])
    answer = get(server, "'My Tab'!A:F")
    assert answer["range"] == "'My Tab'!A1:F1000"
    assert answer["values"] == [[], ["", "", "x"], [], ["", "y"]]  # leading gaps kept
    assert get(server, "'My Tab'")["range"] == "'My Tab'!A1:Z1000"
    assert get(server, "'It''s 2026/27'!A1")["values"] == [["ok"]]
    assert "%2F" in server.requests[-1].path  # a slash in the title stays in one segment
    columns = get(server, "'My Tab'!A1:C4", majorDimension="COLUMNS")
    assert columns["majorDimension"] == "COLUMNS"
    assert columns["values"] == [[], ["", "", "", "y"], ["", "x"]]


def test_unknown_tab_and_unparsable_ranges_are_400(server: GoogleServer) -> None:
    for cells in ("Nope!A1:Z", "Nope", "referrals!A1", "Referrals!A0", "'Referrals!A1"):
        with pytest.raises(HttpError) as caught:
            get(server, cells)
        assert caught.value.resp.status == 400
        error = error_of(caught)
        assert error["message"] == f"Unable to parse range: {cells}"
        assert error["status"] == "INVALID_ARGUMENT"
        assert error["errors"][0]["reason"] == "badRequest"


def test_past_the_grid_is_400(server: GoogleServer) -> None:
    with pytest.raises(HttpError) as caught:
        get(server, "Referrals!A1:AB")
    assert error_of(caught)["message"] == (
        "Range (Referrals!A1:AB) exceeds grid limits. Max rows: 1000, max columns: 26"
    )
    server.put_sheet(BOOK, "Small", [["a"]], row_count=5, column_count=3)
    with pytest.raises(HttpError) as caught:
        get(server, "Small!A6")
    assert "Max rows: 5, max columns: 3" in error_of(caught)["message"]


def test_unknown_spreadsheet_is_404_and_access_is_403(server: GoogleServer) -> None:
    with pytest.raises(HttpError) as caught:
        values(server).get(spreadsheetId="no-such-book", range="Referrals").execute()
    assert caught.value.resp.status == 404
    assert error_of(caught)["message"] == "Requested entity was not found."
    assert error_of(caught)["status"] == "NOT_FOUND"
    server.set_sheet_access(BOOK, "none")
    with pytest.raises(HttpError) as caught:
        get(server, "Referrals")
    assert caught.value.resp.status == 403
    assert error_of(caught)["message"] == "The caller does not have permission"
    server.delete_spreadsheet(BOOK)
    with pytest.raises(HttpError) as caught:
        get(server, "Referrals")
    assert caught.value.resp.status == 404


def test_value_render_options_and_dates(server: GoogleServer) -> None:
    server.put_sheet(
        BOOK,
        "Typed",
        [[date(2026, 11, 3), 12, 2.5, True, "text", datetime(2026, 11, 3, 14, 30)]],
    )
    row = "Typed!A1:F1"
    assert get(server, row)["values"] == [
        ["11/3/2026", "12", "2.5", "TRUE", "text", "11/3/2026 14:30:00"]
    ]
    assert get(server, row, valueRenderOption="UNFORMATTED_VALUE")["values"] == [
        [46329, 12, 2.5, True, "text", 46329 + 14.5 / 24]
    ]
    assert (
        get(
            server,
            row,
            valueRenderOption="UNFORMATTED_VALUE",
            dateTimeRenderOption="FORMATTED_STRING",
        )["values"][0][0]
        == "11/3/2026"
    )
    assert get(server, row, valueRenderOption="FORMULA")["values"][0][:2] == [46329, 12]
    # The sheet's locale decides how a date cell shows, not the reader's.
    server.put_sheet("uk-book", "Log", [[date(2026, 11, 3)]], locale="en_GB")
    answer = values(server).get(spreadsheetId="uk-book", range="Log!A1").execute()
    assert answer["values"] == [["03/11/2026"]]


def test_query_parameters_are_checked_against_the_discovery_document(
    server: GoogleServer,
) -> None:
    path = f"/v4/spreadsheets/{BOOK}/values/Referrals%21A1"
    status, answer = raw_request(server, "GET", path + "?valueRenderOption=PLAIN")
    assert status == 400
    assert answer["error"]["message"] == (
        "Invalid value at 'value_render_option' "
        '(type.googleapis.com/google.apps.sheets.v4.ValueRenderOption), "PLAIN"'
    )
    status, answer = raw_request(server, "GET", path + "?valueInputOption=RAW")  # update's
    assert status == 400 and "Cannot bind query parameter" in answer["error"]["message"]
    status, answer = raw_request(server, "GET", path + "?majorDimension=COLUMNS&prettyPrint=false")
    assert status == 200 and answer["majorDimension"] == "COLUMNS"


# --------------------------------------------------------------------------- the therapist edits


def test_the_therapist_editing_the_sheet(server: GoogleServer) -> None:
    assert server.append_row(BOOK, "Referrals", ["R-4", "11/6/2026"]) == 5
    server.set_cell(BOOK, "Referrals", "C5", "Dr. Osei")
    server.delete_row(BOOK, "Referrals", 2)  # R-1 leaves the sheet; the rest move up
    server.insert_row(BOOK, "Referrals", 2, ["R-0", "11/1/2026"])
    refs = [row[0] for row in get(server, "Referrals!A2:A")["values"]]
    assert refs == ["R-0", "R-2", "R-3", "R-4"]
    assert server.sheet(BOOK, "Referrals")[4] == ["R-4", "11/6/2026", "Dr. Osei"]
    server.rename_tab(BOOK, "Referrals", "Referrals 2026")
    with pytest.raises(HttpError) as caught:
        get(server, "Referrals!A1:Z")
    assert caught.value.resp.status == 400
    assert get(server, "'Referrals 2026'!A1")["values"] == [["Referral #"]]


# --------------------------------------------------------------------------- writes


def test_update_then_add_sheet_then_read_back(server: GoogleServer) -> None:
    service = sheets(server).spreadsheets()
    reply = service.batchUpdate(
        spreadsheetId=BOOK,
        body={"requests": [{"addSheet": {"properties": {"title": "followupd"}}}]},
    ).execute()
    added = reply["replies"][0]["addSheet"]["properties"]
    assert added["title"] == "followupd" and added["index"] == 1
    assert added["gridProperties"] == {"rowCount": 1000, "columnCount": 26}
    assert reply["spreadsheetId"] == BOOK
    rows = [["ref", "state", "since"], ["R-1", "drafted", "2026-11-04"], ["R-2", "held"]]
    update = service.values().update(
        spreadsheetId=BOOK, range="followupd!A1", valueInputOption="RAW", body={"values": rows}
    )
    answer = update.execute()
    assert answer == {
        "spreadsheetId": BOOK,
        "updatedRange": "followupd!A1:C3",
        "updatedRows": 3,
        "updatedColumns": 3,
        "updatedCells": 8,
    }
    assert get(server, "followupd")["values"] == rows
    # Written again, shorter: null leaves a cell alone, "" clears it.
    service.values().update(
        spreadsheetId=BOOK,
        range="followupd!B2:C3",
        valueInputOption="RAW",
        body={"values": [[None, ""], ["sent"]]},
    ).execute()
    assert get(server, "followupd")["values"] == [rows[0], ["R-1", "drafted"], ["R-2", "sent"]]
    tabs = service.get(spreadsheetId=BOOK).execute()["sheets"]
    assert [tab["properties"]["title"] for tab in tabs] == ["Referrals", "followupd"]
    assert tabs[0]["properties"]["sheetId"] == 0


def test_user_entered_values_are_parsed_as_typed(server: GoogleServer) -> None:
    server.put_sheet(BOOK, "In", [])
    values(server).update(
        spreadsheetId=BOOK,
        range="In!A1",
        valueInputOption="USER_ENTERED",
        body={"values": [["11/3/2026", "2026-11-04", "1,234.5", "true", "'0123", "02134", "x"]]},
        includeValuesInResponse=True,
        responseValueRenderOption="UNFORMATTED_VALUE",
    ).execute()
    assert server.sheet(BOOK, "In") == [
        [date(2026, 11, 3), date(2026, 11, 4), 1234.5, True, "0123", 2134, "x"]
    ]
    values(server).update(
        spreadsheetId=BOOK, range="In!A2", valueInputOption="RAW", body={"values": [["11/3/2026"]]}
    ).execute()
    assert server.sheet(BOOK, "In")[1] == ["11/3/2026"]  # RAW: text stays text


def test_a_formula_is_a_formula_only_when_user_entered(server: GoogleServer) -> None:
    """USER_ENTERED `=...` makes a formula (shown as its result); RAW keeps the text."""
    server.put_sheet(BOOK, "In", [])
    text = '=IMPORTXML("https://evil.example/x","//a")'
    for cell, option in (("In!A1", "USER_ENTERED"), ("In!A2", "RAW")):
        values(server).update(
            spreadsheetId=BOOK, range=cell, valueInputOption=option, body={"values": [[text]]}
        ).execute()
    assert server.sheet(BOOK, "In") == [[Formula(text)], [text]]
    assert get(server, "In!A1:A2")["values"] == [["#N/A"], [text]]
    assert get(server, "In!A1:A2", valueRenderOption="FORMULA")["values"] == [[text], [text]]
    assert server.tab_text(BOOK, "In") == [["#N/A"], [text]]


def test_clear_empties_a_range_bounded_to_the_grid(server: GoogleServer) -> None:
    server.put_sheet(BOOK, "T", [["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"]], row_count=3)
    clear = values(server).clear
    answer = clear(spreadsheetId=BOOK, range="T!B2:Z", body={}).execute()
    assert answer == {"spreadsheetId": BOOK, "clearedRange": "T!B2:Z3"}
    assert server.sheet(BOOK, "T") == [["a", "b", "c"], ["d"], ["g"]]
    assert clear(spreadsheetId=BOOK, range="T!A9:B", body={}).execute()["clearedRange"]
    assert server.grid_size(BOOK, "T") == (3, 26)  # nothing grew
    with pytest.raises(HttpError) as caught:
        clear(spreadsheetId=BOOK, range="T!A1", body={"range": "T!A1"}).execute()
    assert caught.value.resp.status == 400  # ClearValuesRequest has no fields
    clear(spreadsheetId=BOOK, range="T", body={}).execute()
    assert server.sheet(BOOK, "T") == []
    assert server.stats.count("spreadsheets.values.clear") == 4


def test_update_includes_values_in_response(server: GoogleServer) -> None:
    answer = (
        values(server)
        .update(
            spreadsheetId=BOOK,
            range="Referrals!E1",
            valueInputOption="USER_ENTERED",
            body={"values": [["Seen"], ["11/9/2026"]], "majorDimension": "ROWS"},
            includeValuesInResponse=True,
        )
        .execute()
    )
    assert answer["updatedData"] == {
        "range": "Referrals!E1:E2",
        "majorDimension": "ROWS",
        "values": [["Seen"], ["11/9/2026"]],
    }
    columns = (
        values(server)
        .update(
            spreadsheetId=BOOK,
            range="Referrals!F1",
            valueInputOption="RAW",
            body={"values": [["a", "b"]], "majorDimension": "COLUMNS"},
        )
        .execute()
    )
    assert columns["updatedRange"] == "Referrals!F1:F2"


def test_update_refusals(server: GoogleServer) -> None:
    update = values(server).update
    cases = [
        (
            {"range": "Referrals!A1:B2", "body": {"values": [["a"], ["b"], ["c"]]}},
            "Requested writing within range [Referrals!A1:B2], but tried writing to row [3]",
        ),
        (
            {"range": "Referrals!A1:B2", "body": {"values": [["a", "b", "c"]]}},
            "Requested writing within range [Referrals!A1:B2], but tried writing to column [C]",
        ),
        (
            {"range": "Referrals!A1000", "body": {"values": [["a"], ["b"]]}},
            "Range (Referrals!A1001) exceeds grid limits. Max rows: 1000, max columns: 26",
        ),
        (
            {"range": "Referrals!A1", "body": {"values": [["a"]], "rnage": "x"}},
            "Invalid JSON payload received. Unknown name \"rnage\" at 'value_range': "
            "Cannot find field.",
        ),
        (
            {"range": "Referrals!A1", "body": {"values": [[{"a": 1}]]}},
            'Invalid values[0][0]: struct_value {"a": 1}',
        ),
        (
            {"range": "Referrals!A1", "body": {"values": [["a"]], "range": "Referrals!B1"}},
            "Invalid ValueRange: its range (Referrals!B1) does not match the range in the "
            "request URL (Referrals!A1).",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(HttpError) as caught:
            update(spreadsheetId=BOOK, valueInputOption="RAW", **kwargs).execute()
        assert caught.value.resp.status == 400, message
        assert error_of(caught)["message"] == message
    # The discovery document does not mark valueInputOption required: the client sends
    # without it, and Google refuses.
    with pytest.raises(HttpError) as caught:
        update(spreadsheetId=BOOK, range="Referrals!A1", body={"values": [["a"]]}).execute()
    assert error_of(caught)["message"] == "'valueInputOption' is required but not specified"
    assert get(server, "Referrals")["values"][0] == HEADER  # nothing was written
    server.set_sheet_access(BOOK, "read")  # shared view-only
    with pytest.raises(HttpError) as caught:
        update(
            spreadsheetId=BOOK, range="Referrals!H1", valueInputOption="RAW", body={"values": [[1]]}
        ).execute()
    assert caught.value.resp.status == 403
    assert get(server, "Referrals!A1")["values"] == [["Referral #"]]  # reading still works


def test_grid_grows_with_append_dimension(server: GoogleServer) -> None:
    """Writing past the grid is refused, as Google does; appendDimension grows it."""
    service = sheets(server).spreadsheets()
    reply = service.batchUpdate(
        spreadsheetId=BOOK,
        body={
            "requests": [
                {
                    "addSheet": {
                        "properties": {
                            "title": "followupd",
                            "gridProperties": {"rowCount": 2, "columnCount": 3},
                        }
                    }
                }
            ]
        },
    ).execute()
    sheet_id = reply["replies"][0]["addSheet"]["properties"]["sheetId"]
    rows = {"values": [["ref"], ["R-1"], ["R-2"]]}
    write = service.values().update(
        spreadsheetId=BOOK, range="followupd!A1", valueInputOption="RAW", body=rows
    )
    with pytest.raises(HttpError) as caught:
        write.execute()
    assert "exceeds grid limits. Max rows: 2, max columns: 3" in error_of(caught)["message"]
    grow = {"appendDimension": {"sheetId": sheet_id, "dimension": "ROWS", "length": 10}}
    assert service.batchUpdate(spreadsheetId=BOOK, body={"requests": [grow]}).execute()[
        "replies"
    ] == [{}]
    write.execute()
    assert get(server, "followupd!A1:A")["values"] == rows["values"]
    assert server.grid_size(BOOK, "followupd") == (12, 3)


def test_batch_update_refusals_change_nothing(server: GoogleServer) -> None:
    service = sheets(server).spreadsheets()
    cases = [
        (
            [{"addSheet": {"properties": {"title": "new"}}}, {"addSheet": {}}, {"addSheet": {}}],
            None,  # valid: untitled tabs are named Sheet3 and Sheet4
        ),
        (
            [
                {"addSheet": {"properties": {"title": "ok"}}},
                {"addSheet": {"properties": {"title": "REFERRALS"}}},
            ],
            'Invalid requests[1].addSheet: A sheet with the name "REFERRALS" already exists. '
            "Please enter another name.",
        ),
        (
            [{"addSheet": {"properties": {"tittle": "x"}}}],
            'Invalid JSON payload received. Unknown name "tittle" at '
            "'requests[0].addSheet.properties': Cannot find field.",
        ),
        (
            [{"deleteSheet": {"sheetId": 0}}],
            "Invalid requests[0]: deleteSheet is not implemented by the test server.",
        ),
        (
            [{"appendDimension": {"sheetId": 99, "dimension": "ROWS", "length": 1}}],
            "Invalid requests[0].appendDimension: No grid with id: 99",
        ),
        ([], "Must specify at least one request."),
    ]
    for requests, message in cases:
        call = service.batchUpdate(spreadsheetId=BOOK, body={"requests": requests})
        if message is None:
            call.execute()
            continue
        with pytest.raises(HttpError) as caught:
            call.execute()
        assert caught.value.resp.status == 400 and error_of(caught)["message"] == message
    titles = [tab["properties"]["title"] for tab in server.spreadsheet(BOOK)["sheets"]]
    assert titles == ["Referrals", "new", "Sheet3", "Sheet4"]  # no "ok": all or nothing


def test_spreadsheets_get_honours_fields(server: GoogleServer) -> None:
    service = sheets(server).spreadsheets()
    answer = service.get(
        spreadsheetId=BOOK, fields="properties.locale,sheets(properties(title,sheetId))"
    ).execute()
    assert answer == {
        "properties": {"locale": "en_US"},
        "sheets": [{"properties": {"title": "Referrals", "sheetId": 0}}],
    }
    full = service.get(spreadsheetId=BOOK).execute()
    _check_schema(full, {"$ref": "Spreadsheet"}, _discovery("sheets.v4")["schemas"], "answer")
    with pytest.raises(HttpError) as caught:
        service.get(spreadsheetId=BOOK, fields="sheets.properties.titel").execute()
    assert caught.value.resp.status == 400
    assert values(server).get(
        spreadsheetId=BOOK, range="Referrals!A1", fields="range"
    ).execute() == {"range": "Referrals!A1"}


# --------------------------------------------------------------------------- faults


def test_injected_429_then_success_with_the_clients_retry(server: GoogleServer) -> None:
    server.inject("spreadsheets.values.get", "429", retry_after=2)
    request = values(server).get(spreadsheetId=BOOK, range="Referrals!A1")
    assert no_sleep(request).execute(num_retries=2)["values"] == [["Referral #"]]
    assert server.stats.count("spreadsheets.values.get") == 2
    assert server.stats.rate_limited == 1


@pytest.mark.parametrize(
    ("fault", "status"), [("429", 429), ("500", 500), ("503", 503), ("403-rate", 403)]
)
def test_error_faults_reach_the_client_then_a_manual_retry_works(
    server: GoogleServer, fault: str, status: int
) -> None:
    server.inject("spreadsheets.values.get", fault, retry_after=3)
    with pytest.raises(HttpError) as caught:
        get(server, "Referrals!A1")
    assert caught.value.resp.status == status
    if status == 429:
        assert caught.value.resp["retry-after"] == "3"
        assert error_of(caught)["status"] == "RESOURCE_EXHAUSTED"
    assert get(server, "Referrals!A1")["values"] == [["Referral #"]]


@pytest.mark.parametrize(
    "kind", ["spreadsheets.values.clear", "spreadsheets.batchUpdate", "spreadsheets.get"]
)
def test_faults_are_injected_into_the_write_side_too(server: GoogleServer, kind: str) -> None:
    before = get(server, "Referrals")["values"]
    server.inject(kind, "503")
    service = sheets(server).spreadsheets()
    call = {
        "spreadsheets.values.clear": service.values().clear(
            spreadsheetId=BOOK, range="Referrals!A2:D", body={}
        ),
        "spreadsheets.batchUpdate": service.batchUpdate(
            spreadsheetId=BOOK, body={"requests": [{"addSheet": {}}]}
        ),
        "spreadsheets.get": service.get(spreadsheetId=BOOK),
    }[kind]
    with pytest.raises(HttpError) as caught:
        call.execute()
    assert caught.value.resp.status == 503
    assert get(server, "Referrals")["values"] == before  # nothing changed
    assert len(server.spreadsheet(BOOK)["sheets"]) == 1
    call.execute()


def test_error_fault_on_update_does_not_write(server: GoogleServer) -> None:
    server.inject("spreadsheets.values.update", "500")
    update = values(server).update(
        spreadsheetId=BOOK, range="Referrals!H1", valueInputOption="RAW", body={"values": [["x"]]}
    )
    with pytest.raises(HttpError):
        update.execute()
    assert get(server, "Referrals!H1:H").get("values") is None
    update.execute()
    assert get(server, "Referrals!H1:H")["values"] == [["x"]]


def test_wildcard_faults_and_a_dropped_get_replayed(server: GoogleServer) -> None:
    server.inject("*", "503")
    with pytest.raises(HttpError):
        get(server, "Referrals!A1")
    # httplib2 replays a request whose answer was lost: a dropped GET is invisible.
    server.inject("spreadsheets.values.get", "drop")
    assert get(server, "Referrals!A1")["values"] == [["Referral #"]]
    assert server.stats.dropped == 1 and server.pending_faults() == []


def test_slow_answer_exceeds_the_client_timeout(server: GoogleServer) -> None:
    server.inject("spreadsheets.values.get", "slow", seconds=1.0)
    service = sheets(server, http=authorized_http(server, timeout=0.3))
    with pytest.raises(TimeoutError):
        service.spreadsheets().values().get(spreadsheetId=BOOK, range="Referrals").execute()
    server.wait_idle()


def test_add_sheet_answer_lost_is_replayed_into_already_exists(server: GoogleServer) -> None:
    """act-then-drop: httplib2 re-sends the POST; the tab was made, the client sees 400."""
    server.inject("spreadsheets.batchUpdate", "act-then-drop")
    call = (
        sheets(server)
        .spreadsheets()
        .batchUpdate(
            spreadsheetId=BOOK,
            body={"requests": [{"addSheet": {"properties": {"title": "followupd"}}}]},
        )
    )
    with pytest.raises(HttpError) as caught:
        call.execute()
    assert "already exists" in error_of(caught)["message"]
    assert server.stats.count("spreadsheets.batchUpdate") == 2
    assert [t["properties"]["title"] for t in server.spreadsheet(BOOK)["sheets"]] == [
        "Referrals",
        "followupd",
    ]


def test_injected_401_refreshes_and_the_refreshed_token_keeps_its_scopes(
    server: GoogleServer,
) -> None:
    server.set_scopes(["spreadsheets.readonly"])
    server.inject("spreadsheets.values.get", "401")
    assert get(server, "Referrals!A1")["values"] == [["Referral #"]]
    assert server.stats.count("oauth.token") == 1
    (refreshed,) = [t for t in server.token_scopes if t != "test-token"]
    assert server.token_scopes[refreshed] == {
        "https://www.googleapis.com/auth/spreadsheets.readonly"
    }


# --------------------------------------------------------------------------- scopes, quota


def test_scopes_read_only_token_cannot_write(server: GoogleServer) -> None:
    server.set_scopes(["spreadsheets.readonly"])
    assert get(server, "Referrals!A1")["values"] == [["Referral #"]]
    for call in (
        values(server).update(
            spreadsheetId=BOOK, range="Referrals!H1", valueInputOption="RAW", body={"values": [[1]]}
        ),
        values(server).clear(spreadsheetId=BOOK, range="Referrals!H1", body={}),
        sheets(server)
        .spreadsheets()
        .batchUpdate(spreadsheetId=BOOK, body={"requests": [{"addSheet": {}}]}),
    ):
        with pytest.raises(HttpError) as caught:
            call.execute()
        assert caught.value.resp.status == 403
        error = error_of(caught)
        assert error["message"] == "Request had insufficient authentication scopes."
        assert error["errors"][0]["reason"] == "insufficientPermissions"
        assert 'error="insufficient_scope"' in caught.value.resp["www-authenticate"]
    # A Gmail-only token (followupd before `auth --sheets`) cannot read the sheet.
    server.set_scopes(["gmail.compose", "calendar.events"])
    with pytest.raises(HttpError) as caught:
        get(server, "Referrals!A1")
    assert caught.value.resp.status == 403
    server.set_scopes(["spreadsheets"])
    assert get(server, "Referrals!A1")["values"] == [["Referral #"]]
    server.set_scopes(None)
    assert server.token_scopes == {}


def test_read_quota_per_user_and_writes_counted_apart(server: GoogleServer) -> None:
    window = 1.0
    server.rate_limit("sheets", 3, window=window)
    get(server, "Referrals!A1")
    first_answered = time.monotonic()  # the server counted the first read before this
    for _ in range(2):
        get(server, "Referrals!A1")
    with pytest.raises(HttpError) as caught:
        get(server, "Referrals!A1")
    assert caught.value.resp.status == 429 and caught.value.resp["retry-after"] == "1"
    assert "'Read requests per minute per user'" in error_of(caught)["message"]
    values(server).update(  # writes have their own budget
        spreadsheetId=BOOK, range="Referrals!H1", valueInputOption="RAW", body={"values": [[1]]}
    ).execute()
    # Another user (token) has a budget of its own.
    info = server.add_user("other@example.com")
    other_http = google_auth_httplib2.AuthorizedHttp(
        server.credentials(info["token"]), http=httplib2.Http(timeout=5)
    )
    other = sheets(server, http=other_http).spreadsheets().values()
    assert other.get(spreadsheetId=BOOK, range="Referrals!A1").execute()["values"]
    # The first read leaves the sliding window one window after it was counted.
    time.sleep(max(0.0, first_answered + window - time.monotonic()) + 0.01)
    get(server, "Referrals!A1")
    server.rate_limit("sheets", None)


# --------------------------------------------------------------------------- batch, discovery


def test_http_batch_of_reads(server: GoogleServer) -> None:
    http = authorized_http(server)
    service = sheets(server, http)
    answers: dict[str, Any] = {}
    batch = BatchHttpRequest(batch_uri=server.batch_uri("sheets"))
    for cells in ("Referrals!A1", "Nope!A1"):
        batch.add(
            service.spreadsheets().values().get(spreadsheetId=BOOK, range=cells),
            callback=lambda rid, answer, error, cells=cells: answers.update(
                {cells: (answer, error)}
            ),
        )
    batch.execute(http=http)
    assert answers["Referrals!A1"][0]["values"] == [["Referral #"]]
    assert answers["Nope!A1"][1].resp.status == 400
    assert server.stats.batches == 1 and server.stats.count("spreadsheets.values.get") == 2


def test_the_clients_requests_land_on_the_discovery_methods(server: GoogleServer) -> None:
    """Each Sheets kind is a method of the shipped discovery document, and the real client's
    request for it (URL built from that document) is routed to that kind."""
    service = sheets(server).spreadsheets()
    built = {
        "spreadsheets.get": service.get(spreadsheetId=BOOK),
        "spreadsheets.batchUpdate": service.batchUpdate(spreadsheetId=BOOK, body={}),
        "spreadsheets.values.get": service.values().get(spreadsheetId=BOOK, range="'A b'!A:B"),
        "spreadsheets.values.update": service.values().update(
            spreadsheetId=BOOK, range="A1", valueInputOption="RAW", body={}
        ),
        "spreadsheets.values.clear": service.values().clear(
            spreadsheetId=BOOK, range="'A b'!A2:B", body={}
        ),
    }
    assert set(built) == SHEETS_KINDS
    for kind, request in built.items():
        spec = discovery_method(kind)
        assert spec["id"] == "sheets." + kind and spec["httpMethod"] == request.method
        target = urlsplit(request.uri)
        route = server._route(request.method, target.path + "?" + target.query)
        assert route is not None and route.kind == kind and route.api == "sheets", kind
    assert server._route("POST", f"/v4/spreadsheets/{BOOK}/values/A1:append") is None
    assert server._route("DELETE", f"/v4/spreadsheets/{BOOK}") is None


def test_put_sheet_refuses_what_a_cell_cannot_hold(server: GoogleServer) -> None:
    with pytest.raises(TypeError):
        server.put_sheet(BOOK, "Bad", [[{"a": 1}]])
    with pytest.raises(ValueError):
        server.put_sheet(BOOK, "Bad", [["a", "b"]], column_count=1)
    with pytest.raises(ValueError):
        server.put_sheet(BOOK, "Bad", [], locale="xx_XX")
    with pytest.raises(KeyError):
        server.set_cell(BOOK, "Nope", "A1", "x")
