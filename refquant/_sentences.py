"""The built-in inputs of ``python -m refquant.validate``: real English sentences from public
domain texts (the Gettysburg Address, the Declaration of Independence, and the opening lines
of nineteenth-century novels and essays), a mix of short and long, plain and punctuated."""

SENTENCES = (
    "Four score and seven years ago our fathers brought forth on this continent, a new nation, "
    "conceived in Liberty, and dedicated to the proposition that all men are created equal.",
    "Now we are engaged in a great civil war, testing whether that nation, or any nation so "
    "conceived and so dedicated, can long endure.",
    "We are met on a great battle-field of that war.",
    "We have come to dedicate a portion of that field, as a final resting place for those who "
    "here gave their lives that that nation might live.",
    "It is altogether fitting and proper that we should do this.",
    "The brave men, living and dead, who struggled here, have consecrated it, far above our poor "
    "power to add or detract.",
    "The world will little note, nor long remember what we say here, but it can never forget "
    "what they did here.",
    "We hold these truths to be self-evident, that all men are created equal, that they are "
    "endowed by their Creator with certain unalienable Rights, that among these are Life, "
    "Liberty and the pursuit of Happiness.",
    "When in the Course of human events, it becomes necessary for one people to dissolve the "
    "political bands which have connected them with another, and to assume among the powers of "
    "the earth, the separate and equal station to which the Laws of Nature and of Nature's God "
    "entitle them, a decent respect to the opinions of mankind requires that they should declare "
    "the causes which impel them to the separation.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.",
    "However little known the feelings or views of such a man may be on his first entering a "
    "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he "
    "is considered the rightful property of some one or other of their daughters.",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
    "age of foolishness, it was the epoch of belief, it was the epoch of incredulity.",
    "Call me Ishmael.",
    "Some years ago, never mind how long precisely, having little or no money in my purse, and "
    "nothing particular to interest me on shore, I thought I would sail about a little and see "
    "the watery part of the world.",
    "When on board H.M.S. Beagle, as naturalist, I was much struck with certain facts in the "
    "distribution of the inhabitants of South America, and in the geological relations of the "
    "present to the past inhabitants of that continent.",
    "There is grandeur in this view of life, with its several powers, having been originally "
    "breathed into a few forms or into one.",
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having "
    "nothing to do.",
    "Once or twice she had peeped into the book her sister was reading, but it had no pictures "
    "or conversations in it.",
    "To Sherlock Holmes she is always the woman.",
    "I have seldom heard him mention her under any other name.",
    "You will rejoice to hear that no disaster has accompanied the commencement of an enterprise "
    "which you have regarded with such evil forebodings.",
    "I went to the woods because I wished to live deliberately, to front only the essential facts "
    "of life, and see if I could not learn what it had to teach.",
    "Happy families are all alike; every unhappy family is unhappy in its own way.",
    "My father's family name being Pirrip, and my Christian name Philip, my infant tongue could "
    "make of both names nothing longer or more explicit than Pip.",
    "In my younger and more vulnerable years my father gave me some advice that I've been turning "
    "over in my mind ever since.",
    "True! nervous, very, very dreadfully nervous I had been and am; but why will you say that I "
    "am mad?",
    "You don't know about me without you have read a book by the name of The Adventures of Tom "
    "Sawyer; but that ain't no matter.",
    "Whether I shall turn out to be the hero of my own life, or whether that station will be held "
    "by anybody else, these pages must show.",
    "The family of Dashwood had long been settled in Sussex.",
    "Their estate was large, and their residence was at Norland Park, in the centre of their "
    "property, where, for many generations, they had lived in so respectable a manner as to "
    "engage the general good opinion of their surrounding acquaintance.",
    "Marley was dead: to begin with.",
    "There was no possibility of taking a walk that day.",
)
