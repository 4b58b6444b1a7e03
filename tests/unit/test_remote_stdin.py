"""Remote.run hands stdin to invoke in big chunks (invoke asks for one character per 10 ms)."""

from migrate.remote.connection import _ChunkedInput


def test_chunked_input_ignores_tiny_read_sizes():
    data = "x" * 200_000
    stream = _ChunkedInput(data)
    first = stream.read(1)
    assert len(first) == 65536
    rest = "".join(iter(lambda: stream.read(1), ""))
    assert first + rest == data


def test_chunked_input_full_read_still_works():
    assert _ChunkedInput("abc").read() == "abc"
