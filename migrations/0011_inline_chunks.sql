-- Staged document chunks stored inline (issue 9, the Drive upload path's throughput).
--
-- Chunks were 1 MiB values with storage EXTERNAL: each was cut into ~526 TOAST rows of ~2 KB,
-- each with its own TOAST index entry. The intake now stages page-sized chunks
-- (`uploads.chunk_bytes`, at most 8112 bytes, checked at config load) with storage PLAIN: one
-- heap row and one index entry per 8 KB page, nothing else. Existing rows keep their storage
-- (SET STORAGE only affects new rows) and are read back by each document's `chunk_bytes`.
alter table document_chunks alter column data set storage plain;

-- The foreign key to `documents` checked every chunk row at commit (deferred: the intake inserts
-- the document row last), one lookup per row: with page-sized rows, about a second per GiB.
-- Nothing else inserts chunks (the intake inserts the document in the same transaction;
-- `drive_import` stages an existing document and rolls back if its row is gone), so only the
-- cascade is kept, as a statement trigger.
alter table document_chunks drop constraint if exists document_chunks_document_id_fkey;

create or replace function document_chunks_delete_orphans() returns trigger language plpgsql as $$
begin
    delete from document_chunks c using gone g where c.document_id = g.id;
    return null;
end
$$;

create or replace trigger documents_delete_chunks
    after delete on documents
    referencing old table as gone
    for each statement execute function document_chunks_delete_orphans();
