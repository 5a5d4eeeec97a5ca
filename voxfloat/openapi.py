"""The OpenAPI 3.1 description of `voxfloat serve`, served at /openapi.json."""
from __future__ import annotations

from typing import Any

from voxfloat import __version__

ERROR = {"$ref": "#/components/schemas/Error"}
AUDIO_BODY = {
    "required": True,
    "description": "The audio file itself as the raw body, any sample rate, any type libsndfile decodes (WAV, FLAC, "
                   "OGG/Vorbis/Opus, MP3, AIFF, ...); its size is limited by --max-body-mb, its length by --max-seconds.",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "audio/*": {"schema": {"type": "string", "format": "binary"}}},
}
MAX_TOP = 1000  # the most candidates /identify lists
SPEAKER_QUERY = {"name": "speaker", "in": "query", "required": True, "schema": {"type": "string"},
                 "description": "Speaker id."}
ERRORS = {
    "400": "Bad parameter (speaker id, top, replace; each at most once, UTF-8), bad Content-Length, empty body, "
           "or a client gone before its body arrived.",
    "401": "Missing or wrong bearer token (only with --token-file).",
    "404": "Unknown speaker.",
    "408": "The body did not arrive within --body-timeout.",
    "409": "The store cannot answer it (missing, unreadable, built by another model or trimming, no speakers "
           "enrolled, no threshold).",
    "413": "Body larger than --max-body-mb (by its Content-Length or as it streams in).",
    "429": "The worker's byte budget for request bodies stayed full for --body-timeout; retry (Retry-After).",
    "422": "Audio that is unreadable, too short, silent or too long.",
}


def obj(**props: Any) -> dict:
    """A JSON object schema whose listed properties are all required."""
    return {"type": "object", "properties": props, "required": list(props)}


def op(summary: str, ok: dict, errors: str, *, body: bool = False, params: tuple = ()) -> dict:
    """One operation: its summary, 200 schema, the error statuses it can give, audio body and parameters."""
    responses = {"200": {"description": "OK", "content": {"application/json": {"schema": ok}}}}
    for code in errors.split():
        responses[code] = {"description": ERRORS[code], "content": {"application/json": {"schema": ERROR}}}
    operation: dict = {"summary": summary, "parameters": list(params), "responses": responses,
                       "security": [{}, {"bearer": []}]}
    if body:
        operation["requestBody"] = AUDIO_BODY
    return operation


NUMBER, STRING, BOOLEAN, INTEGER = {"type": "number"}, {"type": "string"}, {"type": "boolean"}, {"type": "integer"}
NULLABLE_NUMBER, NULLABLE_STRING = {"type": ["number", "null"]}, {"type": ["string", "null"]}

OPENAPI: dict = {
    "openapi": "3.1.0",
    "info": {"title": "voxfloat serve", "version": __version__,
             "description": "Speaker verification over HTTP: one model and one voiceprint store, loaded once."},
    "paths": {
        "/verify": {"post": op(
            "Score the body's audio against one enrolled speaker and accept or reject at the store's threshold.",
            obj(speaker=STRING, score=NUMBER, threshold=NUMBER, threshold_source=STRING, format=STRING,
                accepted=BOOLEAN),
            "400 401 404 408 409 413 422 429", body=True, params=(SPEAKER_QUERY,))},
        "/identify": {"post": op(
            "The enrolled speakers closest to the body's audio; decision is null below the threshold.",
            obj(candidates={"type": "array", "items": obj(speaker=STRING, score=NUMBER)},
                decision=NULLABLE_STRING, threshold=NULLABLE_NUMBER, threshold_source=STRING, format=STRING),
            "400 401 408 409 413 422 429", body=True,
            params=({"name": "top", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TOP, "default": 1},
                     "description": "How many candidates to list."},))},
        "/enroll": {"post": op(
            "Add the body's utterance to a speaker's voiceprint (created if new), written atomically under "
            "the store's lock.",
            obj(speaker=STRING, utterances={**INTEGER, "description": "Utterances this request added (1)."},
                replaced=BOOLEAN, speakers_in_store=INTEGER),
            "400 401 408 409 413 422 429", body=True,
            params=(SPEAKER_QUERY, {"name": "replace", "in": "query", "required": False,
                                    "schema": {"type": "boolean", "default": False},
                                    "description": "Start the voiceprint anew from this utterance."}))},
        "/speakers": {"get": op("The enrolled speaker ids.",
                                obj(speakers={"type": "array", "items": STRING}, count=INTEGER), "401 409")},
        "/speakers/{speaker}": {"delete": op(
            "Delete one speaker's voiceprint.", obj(removed=STRING, speakers_in_store=INTEGER), "401 404 409",
            params=({"name": "speaker", "in": "path", "required": True, "schema": STRING},))},
        "/health": {"get": op(
            "Model, device, store format, speaker count and threshold.",
            {"type": "object", "properties": {"status": STRING, "model": STRING, "device": STRING, "format": STRING,
                                              "count": INTEGER, "threshold": NULLABLE_NUMBER}},
            "401 409")},
    },
    "components": {
        "schemas": {"Error": obj(error=STRING)},
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "Required when the server was started with --token-file."}},
    },
}
