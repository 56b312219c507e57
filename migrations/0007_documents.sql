-- Client documents stored in Google Drive (issue 9). The intake (`POST /v1/uploads`) streams a
-- file into `document_chunks` and inserts its `documents` row and its `drive_upload` job in one
-- transaction; the job uploads the chunks to Drive with the resumable protocol, then marks the
-- row `UPLOADED` and deletes the chunks. `drive_import` moves rows whose `file_url` still points
-- at the old blob storage the same way, updating the row in place.
create table if not exists documents (
    id                 uuid primary key,
    client_id          text        not null references clients (id) on delete cascade,
    title              text        not null,
    file_name          text        not null,
    mime_type          text        not null,
    -- Known once the bytes are staged (an import learns them while downloading).
    size_bytes         bigint,
    -- Lowercase hex SHA-256 of the staged bytes.
    sha256             text,
    status             text        not null default 'PENDING'
                       check (status in ('PENDING', 'UPLOADED', 'FAILED')),
    drive_file_id      text,
    web_view_link      text,
    -- Where the file can be read: the old blob URL until an import moves it, then the Drive
    -- link.
    file_url           text,
    failure_reason     text,
    -- The resumable session of the upload in progress (the session URI is a credential for that
    -- one upload: never logged) and the offset Drive last confirmed.
    upload_session_uri text,
    upload_offset      bigint      not null default 0,
    -- The chunk size the bytes were staged with (the config may change before the upload runs).
    chunk_bytes        integer     not null default 1048576,
    -- Rate-limit refusals met since the last progress: the snooze doubles with each (capped).
    throttle_count     integer     not null default 0,
    uploaded_at        timestamptz,
    created_at         timestamptz not null default now(),
    updated_at         timestamptz not null default now()
);

create index if not exists documents_client_idx on documents (client_id, created_at desc);
create index if not exists documents_status_idx on documents (status) where status <> 'UPLOADED';

-- The staged bytes, in fixed-size chunks (the last may be shorter), numbered from 0. Deferred
-- foreign key: the intake streams chunks before it knows the row's metadata (multipart fields
-- come in any order) and inserts the row last, in the same transaction.
create table if not exists document_chunks (
    document_id uuid    not null references documents (id) on delete cascade
                        deferrable initially deferred,
    seq         integer not null,
    data        bytea   not null,
    primary key (document_id, seq)
);

-- Chunks are mostly incompressible (PDFs, images) and read back once: skip pglz.
alter table document_chunks alter column data set storage external;
