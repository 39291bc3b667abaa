"""The rows of an import file, read as a stream (lines/rows.py), and the ids of lines without one (lines/ids.py)."""

from __future__ import annotations

import io

from chalicelib import messages
from chalicelib.lines import ids
from chalicelib.lines.rows import MAX_ERRORS, Rows


def read(text: str | bytes, period: str | None = None) -> tuple[Rows, list[tuple[int, dict[str, str]]]]:
    rows = Rows(period)
    body = io.BytesIO(text.encode() if isinstance(text, str) else text)
    return rows, list(rows.read(body))


def test_identical_lines_get_the_same_ids_in_every_file_numbered_by_occurrence() -> None:
    text = ("date,vendor,amount,currency\n2026-01-02,COFFEE,3.50,USD\n2026-01-02,COFFEE,3.5,USD\n"
            "2026-01-03,TAXI,12.00,USD\n")
    first, second = read(text)[1], read(text)[1]
    assert [line["lineId"] for _, line in first] == [line["lineId"] for _, line in second]
    coffee, again, taxi = (line["lineId"] for _, line in first)
    assert coffee[:24] == again[:24] != taxi[:24]  # "3.50" and "3.5" are one amount
    assert (coffee[-2:], again[-2:], taxi[-2:]) == ("-1", "-2", "-1")
    assert ids.line_id({"date": "2026-01-02", "vendor": "COFFEE", "amount": "3.500", "currency": "USD"},
                       ids.Occurrences()) == coffee


def test_errors_name_the_files_rows_and_stop_being_kept_after_the_first_100() -> None:
    body = "".join(f"2026-01-{'02' if i % 3 else '32'},V,1.00,USD\n" for i in range(400))
    rows, good = read("date,vendor,amount,currency\n\n" + body)
    # Row 1 is the header, row 2 a blank line: the data starts at row 3.
    assert rows.error_count == 134 and len(rows.errors) == MAX_ERRORS
    assert rows.errors[0].row == 3 and rows.errors[0].field == "date"
    assert rows.errors[0].message.startswith("Row 3 of the CSV (the header is row 1): date must be")
    assert len(good) == 266 and good[0][0] == 4 and rows.rows == 400


def test_one_month_per_file_the_first_rows_or_the_one_named() -> None:
    text = "date,vendor,amount,currency\n2026-01-02,V,1.00,USD\n2026-02-02,V,1.00,USD\n"
    rows, good = read(text)
    assert rows.period == "2026-01" and len(good) == 1
    assert "outside the import's period 2026-01" in rows.errors[0].message and rows.errors[0].row == 3
    named, _ = read(text, period="2026-02")
    assert [e.row for e in named.errors] == [2]


def test_a_bad_header_a_broken_quote_or_bytes_that_are_not_utf8_are_one_error_each() -> None:
    assert read("when,vendor,amount,currency\n2026-01-02,V,1,USD\n")[0].errors[0].field == "header"
    broken = read('date,vendor,amount,currency\n2026-01-02,"V,1,USD\n')[0]
    assert broken.error_count == 1 and "closing quote" in broken.errors[0].message
    assert "not UTF-8" in read(b"date,vendor,amount,currency\n2026-01-02,\xff,1,USD\n")[0].errors[0].message
    assert read("date,vendor,amount,currency\n")[0].errors[0].message.startswith("The CSV has a header row but")


def test_a_lineid_given_twice_in_a_file_is_an_error_naming_the_second_row() -> None:
    rows, good = read("lineId,date,vendor,amount,currency\na,2026-01-02,V,1,USD\na,2026-01-03,V,2,USD\n")
    assert len(good) == 1 and rows.errors[0].row == 3 and rows.errors[0].field == "lineId"


def test_the_buckets_notification_starts_the_import_its_key_names_and_nothing_else() -> None:
    job = "9b2f6a1e-8c1d-4c55-9a51-2f0f5f3f8d11"
    event = ('{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"object": {"key": "imports%2F' + job
             + '.csv"}}}]}')
    assert messages.parse(event) == messages.StartJob(job, "uploaded")
    for other in ('{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"object": {"key": "results/x.json"}}}]}',
                  '{"Service": "Amazon S3", "Event": "s3:TestEvent"}'):
        try:
            messages.parse(other)
        except messages.NotAWorkMessage:
            continue
        raise AssertionError(f"{other} was read as work")
