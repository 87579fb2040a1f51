// offload/lru.h: the LRU list both expert tiers keep per size class. Slots live in an
// array and are linked by index (-1: none); each slot embeds a struct lru_link, and the
// list reaches a slot's link as base + id * stride (base = &slots[0].link, stride =
// sizeof slots[0]), so one implementation serves both slot types.
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lru_link {
  int32_t prev, next; // prev towards the most recently used
  bool in;            // on the list
};

struct lru_list {
  int32_t mru, lru; // ends; victims come from lru
  uint32_t count;
};

static inline void lru_list_init(struct lru_list *l) { l->mru = l->lru = -1, l->count = 0; }
static inline void lru_link_init(struct lru_link *x) { x->prev = x->next = -1, x->in = false; }

static inline struct lru_link *lru_at(void *base, size_t stride, int32_t id) {
  return (struct lru_link *)((char *)base + (size_t)id * stride);
}

// Takes slot id off the list (nothing if it is not on it).
static inline void lru_unlink(struct lru_list *l, void *base, size_t stride, int32_t id) {
  struct lru_link *x = lru_at(base, stride, id);
  if (!x->in) return;
  if (x->prev >= 0)
    lru_at(base, stride, x->prev)->next = x->next;
  else
    l->mru = x->next;
  if (x->next >= 0)
    lru_at(base, stride, x->next)->prev = x->prev;
  else
    l->lru = x->prev;
  x->prev = x->next = -1;
  x->in = false;
  l->count--;
}

// Puts slot id (not on the list) at the most recently used end, or at the victim end
// (empty slots, to be reused before any that hold data).
static inline void lru_insert_at(struct lru_list *l, void *base, size_t stride, int32_t id,
                                 bool at_lru_end) {
  struct lru_link *x = lru_at(base, stride, id);
  if (at_lru_end) {
    x->next = -1;
    x->prev = l->lru;
    if (l->lru >= 0)
      lru_at(base, stride, l->lru)->next = id;
    else
      l->mru = id;
    l->lru = id;
  } else {
    x->prev = -1;
    x->next = l->mru;
    if (l->mru >= 0)
      lru_at(base, stride, l->mru)->prev = id;
    else
      l->lru = id;
    l->mru = id;
  }
  x->in = true;
  l->count++;
}
